//! Object versions, as S3 keeps them once a bucket's versioning is enabled.
//!
//! ## Layout
//!
//! `objects` holds the *current* version of every key, exactly as before versioning
//! existed: reads of the current version, listings and the upload path do not change, and
//! a bucket whose versioning was never enabled pays nothing. `object_versions` holds every
//! other version and every delete marker, numbered per key by `seq`: *smaller is newer*,
//! so that the primary key's order (bucket, key, seq) is ListObjectVersions' order (by key,
//! newest first) and a page of a listing is a range scan.
//!
//! ## Invariants
//!
//! - A key's row in `objects`, if any, is newer than each of its rows in `object_versions`.
//! - A key has a row in `objects` exactly when its newest version is not a delete marker
//!   (the newest delete marker, when it is, is the key's latest version).
//! - A key has at most one `null` version, in either table (`version_id = 'null'`: written
//!   while versioning was off or suspended).
//! - A bucket whose versioning was never enabled has no row in `object_versions`.
//! - Every version's blob belongs to that version alone: deleting a version deletes its
//!   blob; moving a row between the two tables keeps it.
//!
//! `noncurrent_ms` is when a version stopped being the latest (`NULL` while it is the
//! latest: only a delete marker can be latest in `object_versions`), for lifecycle rules
//! on noncurrent versions.

use sluice_meta::{MetaError, Tx, params};

use crate::embedded::{INFO_COLUMNS, INFO_LEN, info_from_row, new_sortable_id};
use crate::{ObjectInfo, StoreError};

/// The version id of an object written while versioning was off or suspended.
pub const NULL_VERSION: &str = "null";

/// The bucket configuration (see [`crate::ObjectStore::bucket_config`]) that holds a
/// bucket's versioning state: `Enabled` or `Suspended`; absent while never enabled.
pub const VERSIONING_CONFIG: &str = "versioning";

/// A bucket's versioning state (S3's PutBucketVersioning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Never enabled: a write replaces the object, a deletion removes it.
    Off,
    /// A write adds a version; a deletion adds a delete marker.
    Enabled,
    /// A write replaces the `null` version (older versions stay); a deletion makes the
    /// `null` version a delete marker.
    Suspended,
}

impl Versioning {
    /// The state a bucket configuration value names (anything else: `Off`).
    pub fn from_config(config: Option<&str>) -> Self {
        match config {
            Some("Enabled") => Versioning::Enabled,
            Some("Suspended") => Versioning::Suspended,
            _ => Versioning::Off,
        }
    }

    /// The configuration value of the state; `None` for `Off`.
    pub fn config(self) -> Option<&'static str> {
        match self {
            Versioning::Off => None,
            Versioning::Enabled => Some("Enabled"),
            Versioning::Suspended => Some("Suspended"),
        }
    }
}

/// What a deletion did (S3's `x-amz-version-id` and `x-amz-delete-marker` answers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The version deleted, or the delete marker created (`null` included); `None` in a
    /// bucket whose versioning was never enabled, deleting without a version id.
    pub version_id: Option<String>,
    /// A delete marker was created, or the version deleted was one.
    pub delete_marker: bool,
}

/// Where a listing of versions starts: after every version of keys up to `key` when
/// `version_id` is `None`, otherwise after that version of `key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionMarker {
    pub key: String,
    pub version_id: Option<String>,
    /// The [`VersionEntry::position`] of the version: when set, the listing resumes after
    /// that place in `key`'s versions, whether or not the version still exists (a sweep
    /// that deletes as it lists). Clients' markers name versions only.
    pub position: Option<i64>,
}

/// One entry of a listing of versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    /// The version (for a delete marker: key, version, owner and time only).
    pub info: ObjectInfo,
    pub is_latest: bool,
    pub delete_marker: bool,
    /// When the version stopped being the latest (`None` while it is).
    pub noncurrent_since_ms: Option<i64>,
    /// The version's place among its key's versions, for [`VersionMarker::position`].
    pub position: i64,
}

/// Whether `id` has the form of a version id: `null`, or one this store makes (32
/// lower-case hex digits). Anything else is refused by S3 as `InvalidArgument`.
pub fn valid_version_id(id: &str) -> bool {
    id == NULL_VERSION
        || (id.len() == 32
            && id
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
}

/// A new version id: increasing, so that versions sort by creation as well.
pub(crate) fn new_version_id(now: i64) -> String {
    new_sortable_id(now)
}

/// The bucket's versioning state, read in the transaction that acts on it.
pub(crate) fn versioning_in_tx(tx: &Tx<'_>, bucket: &str) -> Result<Versioning, MetaError> {
    let config: Option<String> = tx.query_opt(
        "SELECT config FROM bucket_configs WHERE bucket = ?1 AND kind = ?2",
        params![bucket, VERSIONING_CONFIG],
        |r| r.get(0),
    )?;
    Ok(Versioning::from_config(config.as_deref()))
}

/// The `seq` a version added to the key now gets: below every other (newest).
fn next_seq(tx: &Tx<'_>, bucket: &str, key: &str) -> Result<i64, MetaError> {
    tx.query_row(
        "SELECT COALESCE(MIN(seq), 0) - 1 FROM object_versions WHERE bucket = ?1 AND key = ?2",
        params![bucket, key],
        |r| r.get(0),
    )
}

const VERSION_COLUMNS: &str = "size, etag, sha256, content_type, modified_ms, owner, inline, \
                               blob, metadata, parts, blocks, tags, headers";

/// Marks the key's latest entry in `object_versions` (a delete marker, if any) noncurrent.
fn mark_noncurrent(tx: &Tx<'_>, bucket: &str, key: &str, now: i64) -> Result<(), MetaError> {
    tx.execute(
        "UPDATE object_versions SET noncurrent_ms = ?3
         WHERE bucket = ?1 AND key = ?2 AND noncurrent_ms IS NULL",
        params![bucket, key, now],
    )?;
    Ok(())
}

/// Moves the key's current version (it must exist) into `object_versions`, noncurrent
/// from `now`.
fn retire_current(tx: &Tx<'_>, bucket: &str, key: &str, now: i64) -> Result<(), MetaError> {
    mark_noncurrent(tx, bucket, key, now)?;
    let seq = next_seq(tx, bucket, key)?;
    tx.execute(
        &format!(
            "INSERT INTO object_versions
                 (bucket, key, seq, version_id, marker, noncurrent_ms, {VERSION_COLUMNS})
             SELECT bucket, key, ?3, version_id, 0, ?4, {VERSION_COLUMNS}
             FROM objects WHERE bucket = ?1 AND key = ?2"
        ),
        params![bucket, key, seq, now],
    )?;
    tx.execute(
        "DELETE FROM objects WHERE bucket = ?1 AND key = ?2",
        params![bucket, key],
    )?;
    Ok(())
}

/// Deletes the key's `null` version from `object_versions`; its blob, if it had one, is
/// garbage once the transaction commits.
fn drop_null_version(tx: &Tx<'_>, bucket: &str, key: &str) -> Result<Option<String>, MetaError> {
    let blobs = tx.query_vec(
        "DELETE FROM object_versions WHERE bucket = ?1 AND key = ?2 AND version_id = 'null'
         RETURNING blob",
        params![bucket, key],
        |r| r.get::<Option<String>>(0),
    )?;
    Ok(blobs.into_iter().flatten().next())
}

/// Makes the newest entry of `object_versions` the key's current version when the key has
/// none and that entry is not a delete marker (a delete marker stays, and is latest).
fn promote_newest(tx: &Tx<'_>, bucket: &str, key: &str) -> Result<(), MetaError> {
    let current = tx.exists(
        "SELECT 1 FROM objects WHERE bucket = ?1 AND key = ?2",
        params![bucket, key],
    )?;
    if current {
        return Ok(());
    }
    let newest: Option<(i64, bool)> = tx.query_opt(
        "SELECT seq, marker FROM object_versions WHERE bucket = ?1 AND key = ?2
         ORDER BY seq LIMIT 1",
        params![bucket, key],
        |r| Ok((r.get(0)?, r.get::<i64>(1)? != 0)),
    )?;
    match newest {
        None => {}
        Some((seq, true)) => {
            tx.execute(
                "UPDATE object_versions SET noncurrent_ms = NULL
                 WHERE bucket = ?1 AND key = ?2 AND seq = ?3",
                params![bucket, key, seq],
            )?;
        }
        Some((seq, false)) => {
            tx.execute(
                &format!(
                    "INSERT INTO objects (bucket, key, version_id, {VERSION_COLUMNS})
                     SELECT bucket, key, version_id, {VERSION_COLUMNS} FROM object_versions
                     WHERE bucket = ?1 AND key = ?2 AND seq = ?3"
                ),
                params![bucket, key, seq],
            )?;
            tx.execute(
                "DELETE FROM object_versions WHERE bucket = ?1 AND key = ?2 AND seq = ?3",
                params![bucket, key, seq],
            )?;
        }
    }
    Ok(())
}

/// The key's current version as a write sees it: its version id and blob.
pub(crate) struct Current {
    pub version_id: String,
    pub blob: Option<String>,
}

/// Makes room for a new current version of the key, by the bucket's versioning state,
/// before the write upserts its row into `objects`. Returns the new version's id and the
/// blob that is garbage once the transaction commits (the `null` version replaced).
pub(crate) fn make_room(
    tx: &Tx<'_>,
    bucket: &str,
    key: &str,
    state: Versioning,
    current: Option<Current>,
    now: i64,
) -> Result<(String, Option<String>), MetaError> {
    match state {
        Versioning::Off => Ok((NULL_VERSION.to_owned(), current.and_then(|c| c.blob))),
        Versioning::Enabled => {
            match current {
                Some(_) => retire_current(tx, bucket, key, now)?,
                None => mark_noncurrent(tx, bucket, key, now)?,
            }
            Ok((new_version_id(now), None))
        }
        Versioning::Suspended => {
            let replaced = match current {
                Some(c) if c.version_id == NULL_VERSION => c.blob,
                Some(_) => {
                    retire_current(tx, bucket, key, now)?;
                    None
                }
                None => {
                    mark_noncurrent(tx, bucket, key, now)?;
                    None
                }
            };
            let dropped = drop_null_version(tx, bucket, key)?;
            Ok((NULL_VERSION.to_owned(), replaced.or(dropped)))
        }
    }
}

/// Deletes as S3's DeleteObject does, in a transaction: the version `version_id` for good,
/// or — `None` — the object by the bucket's versioning state (removed when versioning is
/// off; otherwise a delete marker becomes its latest version). Returns what was done, the
/// event to notify (`None`: nothing changed) and the blobs that are garbage once the
/// transaction commits.
pub(crate) fn delete_in_tx(
    tx: &Tx<'_>,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    bypass_governance: bool,
    now: i64,
) -> Result<(Deleted, Option<&'static str>, Vec<String>), StoreError> {
    let state = versioning_in_tx(tx, bucket)?;
    if version_id.is_none() && state == Versioning::Off {
        // Never versioned: the object goes, in one statement.
        let removed: Option<Option<String>> = tx.query_opt(
            "DELETE FROM objects WHERE bucket = ?1 AND key = ?2 RETURNING blob",
            params![bucket, key],
            |r| r.get(0),
        )?;
        let event = removed.is_some().then_some("ObjectRemoved:Delete");
        return Ok((
            Deleted::default(),
            event,
            removed.flatten().into_iter().collect(),
        ));
    }
    // The current version: its id, blob and headers (object lock, below).
    let current: Option<(String, Option<String>, Option<String>)> = tx.query_opt(
        "SELECT version_id, blob, headers FROM objects WHERE bucket = ?1 AND key = ?2",
        params![bucket, key],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let Some(wanted) = version_id else {
        let marker_id = match state {
            Versioning::Enabled => new_version_id(now),
            Versioning::Suspended | Versioning::Off => NULL_VERSION.to_owned(),
        };
        let mut garbage = Vec::new();
        match current {
            Some((v, blob, _)) if state == Versioning::Suspended && v == NULL_VERSION => {
                tx.execute(
                    "DELETE FROM objects WHERE bucket = ?1 AND key = ?2",
                    params![bucket, key],
                )?;
                garbage.extend(blob);
            }
            Some(_) => retire_current(tx, bucket, key, now)?,
            None => {}
        }
        if state == Versioning::Suspended {
            garbage.extend(drop_null_version(tx, bucket, key)?);
        }
        mark_noncurrent(tx, bucket, key, now)?;
        let seq = next_seq(tx, bucket, key)?;
        tx.execute(
            "INSERT INTO object_versions
                 (bucket, key, seq, version_id, marker, noncurrent_ms, size, etag, sha256,
                  content_type, modified_ms, metadata)
             VALUES (?1, ?2, ?3, ?4, 1, NULL, 0, '', '', '', ?5, '{}')",
            params![bucket, key, seq, &marker_id, now],
        )?;
        let deleted = Deleted {
            version_id: Some(marker_id),
            delete_marker: true,
        };
        return Ok((deleted, Some("ObjectRemoved:DeleteMarkerCreated"), garbage));
    };
    // Object lock protects versions (not keys): a version under retention or a legal hold
    // is not deleted.
    let is_current = current.as_ref().is_some_and(|(v, _, _)| v == wanted);
    let headers: Option<String> = if is_current {
        current.as_ref().and_then(|(_, _, h)| h.clone())
    } else {
        tx.query_opt(
            "SELECT headers FROM object_versions
             WHERE bucket = ?1 AND key = ?2 AND version_id = ?3",
            params![bucket, key, wanted],
            |r| r.get::<Option<String>>(0),
        )?
        .flatten()
    };
    if let Some(h) = headers {
        let headers: crate::ObjectHeaders = serde_json::from_str(&h).unwrap_or_default();
        if let Some(why) = headers.deletion_refused(now, bypass_governance) {
            return Err(StoreError::ObjectLocked(why.to_owned()));
        }
    }
    if let Some((_, blob, _)) = current.as_ref().filter(|_| is_current) {
        tx.execute(
            "DELETE FROM objects WHERE bucket = ?1 AND key = ?2",
            params![bucket, key],
        )?;
        promote_newest(tx, bucket, key)?;
        let deleted = Deleted {
            version_id: Some(wanted.to_owned()),
            delete_marker: false,
        };
        return Ok((
            deleted,
            Some("ObjectRemoved:Delete"),
            blob.iter().cloned().collect(),
        ));
    }
    let removed: Vec<(bool, Option<String>)> = tx.query_vec(
        "DELETE FROM object_versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3
         RETURNING marker, blob",
        params![bucket, key, wanted],
        |r| Ok((r.get::<i64>(0)? != 0, r.get(1)?)),
    )?;
    let Some((marker, _)) = removed.first().cloned() else {
        crate::embedded::require_bucket(tx, bucket)?;
        return Ok((
            Deleted {
                version_id: Some(wanted.to_owned()),
                delete_marker: false,
            },
            None,
            Vec::new(),
        ));
    };
    promote_newest(tx, bucket, key)?;
    let garbage = removed.into_iter().filter_map(|(_, b)| b).collect();
    let deleted = Deleted {
        version_id: Some(wanted.to_owned()),
        delete_marker: marker,
    };
    Ok((deleted, Some("ObjectRemoved:Delete"), garbage))
}

/// Changes the headers of the current version of a key, or of the version `version_id`,
/// with `update`; returns them as changed.
pub(crate) fn update_headers_in_tx(
    tx: &Tx<'_>,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    update: &crate::HeadersUpdate,
) -> Result<crate::ObjectHeaders, StoreError> {
    let version = match version_id {
        Some(v) => v.to_owned(),
        None => {
            let current: Option<String> = tx.query_opt(
                "SELECT version_id FROM objects WHERE bucket = ?1 AND key = ?2",
                params![bucket, key],
                |r| r.get(0),
            )?;
            match current {
                Some(v) => v,
                None => {
                    crate::embedded::require_bucket(tx, bucket)?;
                    return Err(StoreError::NoSuchKey {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                    });
                }
            }
        }
    };
    let (info, ..) = version_row(tx, bucket, key, &version)?;
    let mut headers = info.headers;
    update(&mut headers)?;
    let stored = (!headers.is_empty())
        .then(|| serde_json::to_string(&headers).ok())
        .flatten();
    for table in ["objects", "object_versions"] {
        tx.execute(
            &format!(
                "UPDATE {table} SET headers = ?4 WHERE bucket = ?1 AND key = ?2 AND version_id = ?3"
            ),
            params![bucket, key, &version, &stored],
        )?;
    }
    Ok(headers)
}

/// One version's row: its metadata, where its bytes are (inline or a blob), its blocks'
/// checksums and its part list.
pub(crate) type VersionRow = (
    ObjectInfo,
    Option<Vec<u8>>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
);

/// The row of the version `version_id` of a key: `NoSuchVersion` when there is none,
/// `DeleteMarker` when it is one.
pub(crate) fn version_row(
    tx: &Tx<'_>,
    bucket: &str,
    key: &str,
    version_id: &str,
) -> Result<VersionRow, StoreError> {
    let read = |table: &str| -> Result<Option<(VersionRow, bool)>, MetaError> {
        let marker = if table == "objects" { "0" } else { "marker" };
        let sql = format!(
            "SELECT {INFO_COLUMNS}, inline, blob, blocks, parts, {marker} FROM {table}
             WHERE bucket = ?1 AND key = ?2 AND version_id = ?3"
        );
        tx.query_opt(&sql, params![bucket, key, version_id], |r| {
            Ok((
                (
                    info_from_row(r)?,
                    r.get(INFO_LEN)?,
                    r.get(INFO_LEN + 1)?,
                    r.get(INFO_LEN + 2)?,
                    r.get(INFO_LEN + 3)?,
                ),
                r.get::<i64>(INFO_LEN + 4)? != 0,
            ))
        })
    };
    let found = match read("objects")? {
        Some(row) => Some(row),
        None => read("object_versions")?,
    };
    match found {
        Some((row, false)) => Ok(row),
        Some((row, true)) => Err(StoreError::DeleteMarker {
            version_id: version_id.to_owned(),
            last_modified_ms: row.0.last_modified_ms,
        }),
        None => {
            crate::embedded::require_bucket(tx, bucket)?;
            Err(StoreError::NoSuchVersion {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version_id: version_id.to_owned(),
            })
        }
    }
}

/// The `seq` that stands for a key's current version in a listing: below every other.
const CURRENT_SEQ: i64 = i64::MIN;

/// Every version and delete marker of the keys of `bucket` starting with `prefix`, by key
/// then newest first, after `after`; at most `limit`.
pub(crate) fn list_in_tx(
    tx: &Tx<'_>,
    bucket: &str,
    prefix: &str,
    after: Option<&VersionMarker>,
    limit: usize,
) -> Result<Vec<VersionEntry>, StoreError> {
    crate::embedded::require_bucket(tx, bucket)?;
    // Position after the marker: keys above its key, or its key's versions older (larger
    // `seq`) than it.
    let (from_key, after_seq, mid_key) = match after {
        None => (String::new(), CURRENT_SEQ, false),
        Some(VersionMarker {
            key,
            position: Some(seq),
            ..
        }) => (key.clone(), *seq, true),
        Some(VersionMarker {
            key,
            version_id: None,
            ..
        }) => (key.clone(), i64::MAX, false),
        Some(VersionMarker {
            key,
            version_id: Some(v),
            ..
        }) => {
            let current = tx.exists(
                "SELECT 1 FROM objects WHERE bucket = ?1 AND key = ?2 AND version_id = ?3",
                params![bucket, key, v],
            )?;
            let seq = if current {
                Some(CURRENT_SEQ)
            } else {
                tx.query_opt(
                    "SELECT seq FROM object_versions
                     WHERE bucket = ?1 AND key = ?2 AND version_id = ?3",
                    params![bucket, key, v],
                    |r| r.get::<i64>(0),
                )?
            };
            let Some(seq) = seq else {
                return Err(StoreError::InvalidArgument(
                    "Invalid version id specified".into(),
                ));
            };
            (key.clone(), seq, true)
        }
    };
    // Each table is read as a range of its primary key (at most `limit` rows), and the two
    // ranges merged. Keys with the prefix are not below it.
    let lowest = if prefix > from_key.as_str() {
        prefix.to_owned()
    } else {
        from_key.clone()
    };
    let sql = format!(
        "SELECT * FROM (
             SELECT * FROM (
                 SELECT {INFO_COLUMNS}, 0 AS marker, {CURRENT_SEQ} AS seq,
                     CAST(NULL AS BIGINT) AS noncurrent_ms
                 FROM objects
                 WHERE bucket = ?1 AND key >= ?6 AND substr(key, 1, length(?3)) = ?3
                     AND key > ?2
                 ORDER BY key LIMIT ?5
             ) c
             UNION ALL
             SELECT * FROM (
                 SELECT {INFO_COLUMNS}, marker, seq, noncurrent_ms FROM object_versions
                 WHERE bucket = ?1 AND key >= ?6 AND substr(key, 1, length(?3)) = ?3
                     AND (key > ?2 OR seq > ?4)
                 ORDER BY key, seq LIMIT ?5
             ) o
         ) v
         ORDER BY key, seq LIMIT ?5"
    );
    let rows = tx.query_vec(
        &sql,
        params![bucket, &from_key, prefix, after_seq, limit as i64, &lowest],
        |r| {
            Ok((
                info_from_row(r)?,
                r.get::<i64>(INFO_LEN)? != 0,
                r.get::<i64>(INFO_LEN + 1)?,
                r.get::<Option<i64>>(INFO_LEN + 2)?,
            ))
        },
    )?;
    let mut out: Vec<VersionEntry> = Vec::with_capacity(rows.len());
    for (info, delete_marker, position, noncurrent_since_ms) in rows {
        // The first entry of a key is its latest, unless the page starts inside the key.
        let first_of_key = match out.last() {
            Some(prev) => prev.info.key != info.key,
            None => !(mid_key && info.key == from_key),
        };
        out.push(VersionEntry {
            info,
            is_latest: first_of_key,
            delete_marker,
            noncurrent_since_ms,
            position,
        });
    }
    Ok(out)
}
