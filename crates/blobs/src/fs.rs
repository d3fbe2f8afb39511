//! The embedded blob engine: a file per blob, `<dir>/<first two hex digits>/<id>`.
//!
//! A blob is written to `<id>.tmp-<random>` beside its final name by a writer on the
//! blocking pool (chunks reach it through a small channel, so memory stays bounded), then
//! fsynced, renamed to `<id>` and its directory fsynced: a blob that exists is whole and
//! durable. A body that fails, or a caller that goes away, leaves no blob: the writer
//! deletes its temporary file. Temporary files a crash left behind are deleted by
//! [`Blobs::remove_partial`] (the store's sweep, at start).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::{BlobEntry, BlobError, Blobs, ByteStream, valid_id};

/// Bytes read from a file per chunk of a [`Blobs::get_range`] stream.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks in flight between a body and its writer.
const WRITE_QUEUE: usize = 16;

pub struct FsBlobs {
    dir: PathBuf,
}

impl FsBlobs {
    /// Opens (creating if needed) the blob directory `dir`.
    pub fn open(dir: &Path) -> Result<FsBlobs, BlobError> {
        std::fs::create_dir_all(dir)?;
        Ok(FsBlobs::at(dir))
    }

    /// The blob directory `dir`, as it is (nothing is created; see [`Blobs::check`]).
    pub fn at(dir: &Path) -> FsBlobs {
        FsBlobs {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, id: &str) -> Result<PathBuf, BlobError> {
        if !valid_id(id) {
            return Err(BlobError::Backend(format!("invalid blob id {id:?}")));
        }
        Ok(self.dir.join(&id[..2]).join(id))
    }
}

/// Deletes temporary files (`<id>.tmp-…`) last written before `before_ms`.
fn remove_temporaries(dir: &Path, before_ms: i64) -> Result<usize, BlobError> {
    let mut removed = 0;
    for shard in std::fs::read_dir(dir)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(shard.path())? {
            let f = f?;
            if f.file_name().to_string_lossy().contains(".tmp-")
                && modified_ms(&f.metadata()?) < before_ms
            {
                match std::fs::remove_file(f.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(removed)
}

fn modified_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

enum Msg {
    Chunk(Bytes),
    /// The body ended: make the blob durable.
    End,
}

/// Writes chunks to `tmp` until `End` (fsync, rename to `path`, fsync the directory) or
/// until the sender goes away without it (delete `tmp`). Returns the size.
fn write_blob(
    path: &Path,
    tmp: &Path,
    mut rx: tokio::sync::mpsc::Receiver<Msg>,
) -> Result<u64, BlobError> {
    use std::io::Write;
    let result = (|| -> Result<u64, BlobError> {
        let parent = path
            .parent()
            .ok_or_else(|| BlobError::Backend("blob path has no parent".into()))?;
        std::fs::create_dir_all(parent)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut size = 0u64;
        loop {
            match rx.blocking_recv() {
                Some(Msg::Chunk(c)) => {
                    out.write_all(&c)?;
                    size += c.len() as u64;
                }
                Some(Msg::End) => break,
                None => {
                    return Err(BlobError::Body(std::io::Error::other(
                        "the body ended before it was complete",
                    )));
                }
            }
        }
        let f = out
            .into_inner()
            .map_err(|e| BlobError::from(e.into_error()))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(tmp, path)?;
        std::fs::File::open(parent)?.sync_all()?;
        Ok(size)
    })();
    if result.is_err()
        && let Err(e) = std::fs::remove_file(tmp)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %tmp.display(), error = %e, "cannot delete a partial blob; it is removed at the next start");
    }
    result
}

#[async_trait::async_trait]
impl Blobs for FsBlobs {
    async fn put_stream(&self, id: &str, mut body: ByteStream) -> Result<u64, BlobError> {
        let path = self.path(id)?;
        let tmp = path.with_file_name(format!("{id}.tmp-{}", crate::new_id()));
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_blob(&path, &tmp, rx));
        let fed: Result<(), std::io::Error> = async {
            while let Some(item) = body.next().await {
                if tx.send(Msg::Chunk(item?)).await.is_err() {
                    // The writer failed: its error is reported below.
                    return Ok(());
                }
            }
            let _ = tx.send(Msg::End).await;
            Ok(())
        }
        .await;
        // Without `End` the writer deletes its file and fails.
        drop(tx);
        let written = writer
            .await
            .map_err(|e| BlobError::Backend(format!("blob writer failed: {e}")))?;
        match fed {
            Err(e) => Err(BlobError::Body(e)),
            Ok(()) => written,
        }
    }

    async fn get_range(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, BlobError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path(id)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        let (start, len) = match range {
            // Saturating: a range to `u64::MAX` means "to the end".
            Some((first, last)) if last >= first => (first, (last - first).saturating_add(1)),
            Some(_) => (0, 0),
            None => (0, u64::MAX),
        };
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start)).await?;
        }
        let stream = futures_util::stream::unfold(
            (file.take(len), false),
            |(mut reader, done)| async move {
                if done {
                    return None;
                }
                let mut buf = vec![0u8; READ_CHUNK];
                match reader.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), (reader, false)))
                    }
                    Err(e) => Some((Err(e), (reader, true))),
                }
            },
        );
        Ok(Box::pin(stream))
    }

    async fn delete(&self, id: &str) -> Result<(), BlobError> {
        let path = self.path(id)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobEntry>, BlobError> {
        let dir = self.dir.clone();
        let after = after.map(str::to_owned);
        tokio::task::spawn_blocking(move || list_blocking(&dir, after.as_deref(), limit))
            .await
            .map_err(|e| BlobError::Backend(format!("blob listing failed: {e}")))?
    }

    async fn remove_partial(&self, before_ms: i64) -> Result<usize, BlobError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || remove_temporaries(&dir, before_ms))
            .await
            .map_err(|e| BlobError::Backend(format!("cleanup failed: {e}")))?
    }

    /// The directory exists, is a directory, and a file can be created in it (a probe,
    /// removed at once).
    async fn check(&self) -> Result<(), BlobError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || check_dir(&dir))
            .await
            .map_err(|e| BlobError::Backend(format!("blob directory check failed: {e}")))?
    }

    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

fn check_dir(dir: &Path) -> Result<(), BlobError> {
    let unusable = |what: String| BlobError::Unavailable(format!("{}: {what}", dir.display()));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(unusable("not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unusable("the directory does not exist".into()));
        }
        Err(e) => return Err(unusable(format!("cannot read it: {e}"))),
    }
    // Not a blob's name: listings and sweeps pass it by.
    let probe = dir.join(format!(".check-{}", crate::new_id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| unusable(format!("cannot create a file in it: {e}")))?;
    std::fs::remove_file(&probe)
        .map_err(|e| unusable(format!("cannot remove {}: {e}", probe.display())))
}

fn list_blocking(
    dir: &Path,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<BlobEntry>, BlobError> {
    let mut shards: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|s| s.len() == 2)
        .collect();
    shards.sort();
    let from_shard = after.map(|a| a.get(..2).unwrap_or(a).to_owned());
    let mut out = Vec::new();
    for shard in shards {
        if from_shard.as_deref().is_some_and(|f| shard.as_str() < f) {
            continue;
        }
        let mut ids: Vec<(String, std::fs::Metadata)> = std::fs::read_dir(dir.join(&shard))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let meta = e.metadata().ok()?;
                (valid_id(&name) && meta.is_file()).then_some((name, meta))
            })
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a))
            .collect();
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, meta) in ids {
            if out.len() >= limit {
                return Ok(out);
            }
            out.push(BlobEntry {
                id,
                modified_ms: modified_ms(&meta),
            });
        }
    }
    Ok(out)
}
