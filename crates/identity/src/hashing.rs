//! Password hashing on a fixed pool of threads, so that memory does not grow with the number
//! of concurrent sign-ups.
//!
//! argon2id with Cognito-grade parameters needs 19 MiB of working memory per hash. Hashing on
//! `spawn_blocking` let every concurrent SignUp allocate its own (up to tokio's 512 blocking
//! threads: gigabytes), and the allocator kept most of it afterwards. Here:
//!
//! - [`workers`] threads (one per core, at most [`MAX_WORKERS`]) each own one working buffer,
//!   allocated once and reused for every hash, so the pool's memory is
//!   `workers × 19 MiB` whatever the load;
//! - jobs wait in a queue of [`QUEUE_PER_WORKER`] per worker; when it is full, the job is
//!   refused at once with [`IdentityError::TooManyRequests`] (Cognito's
//!   `TooManyRequestsException`, which the AWS SDKs retry with backoff) instead of waiting
//!   without bound.
//!
//! The pool is process-wide (one per process, like the cores it shares) and started on first
//! use. A job that panics is caught and reported as a backend error; its worker lives on.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::IdentityError;

/// Most hashing threads, whatever the core count.
pub const MAX_WORKERS: usize = 8;
/// Jobs that may wait per worker before new ones are refused.
pub const QUEUE_PER_WORKER: usize = 16;

/// A worker's reusable argon2 working memory.
pub(crate) struct Scratch {
    blocks: Vec<Block>,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Scratch { blocks: Vec::new() }
    }

    /// The buffer for `params`, grown (once) to its size.
    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let n = params.block_count();
        if self.blocks.len() < n {
            self.blocks.resize(n, Block::default());
        }
        &mut self.blocks[..n]
    }
}

type Job = Box<dyn FnOnce(&mut Scratch) + Send>;

/// A pool of hashing threads with a bounded queue.
pub(crate) struct HashPool {
    queue: SyncSender<Job>,
}

/// Hashing threads in this process.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS)
}

/// The process's pool: [`workers`] threads, [`QUEUE_PER_WORKER`] waiting jobs per thread.
pub(crate) fn pool() -> &'static HashPool {
    static POOL: OnceLock<HashPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = workers();
        HashPool::new(n, n * QUEUE_PER_WORKER)
    })
}

impl HashPool {
    pub(crate) fn new(workers: usize, queue: usize) -> Self {
        let (tx, jobs) = sync_channel::<Job>(queue);
        let jobs = std::sync::Arc::new(Mutex::new(jobs));
        for i in 0..workers {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sluice-hash-{i}"))
                .spawn(move || work(&jobs));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        HashPool { queue: tx }
    }

    /// Runs `f` on a hashing thread. Refused with [`IdentityError::TooManyRequests`] when the
    /// queue is full.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, IdentityError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Scratch) -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(IdentityError::TooManyRequests(
                    "Too many requests: password hashing is at capacity, retry later".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(IdentityError::Backend(
                    "password hashing has stopped".into(),
                ));
            }
        }
        rx.await
            .map_err(|_| IdentityError::Backend("password hashing failed".into()))
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    let mut scratch = Scratch::new();
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // The job sends its own result; a panic drops its sender, which the caller sees.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut scratch)));
    }
}

/// An argon2id hash (Argon2's default parameters: 19 MiB, 2 passes, 1 lane) in PHC string form,
/// computed in `scratch`.
pub(crate) fn hash(password: &str, scratch: &mut Scratch) -> Result<String, IdentityError> {
    let fail =
        |e: &dyn std::fmt::Display| IdentityError::Backend(format!("cannot hash password: {e}"));
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| fail(&e))?;
    let out = compute(
        Algorithm::Argon2id,
        Version::V0x13,
        &params,
        password,
        salt_bytes,
        scratch,
    )
    .map_err(|e| fail(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| fail(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(out),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (any argon2 variant and parameters; the
/// comparison is constant-time).
pub(crate) fn verify(password: &str, phc: &str, scratch: &mut Scratch) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(h.algorithm) else {
        return false;
    };
    let version = match h.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    // The output length comes from the stored hash.
    let Ok(params) = Params::try_from(&h) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    match compute(algorithm, version, &params, password, salt_bytes, scratch) {
        Ok(out) => out == expected,
        Err(_) => false,
    }
}

fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &str,
    salt: &[u8],
    scratch: &mut Scratch,
) -> Result<Output, argon2::password_hash::Error> {
    let argon = Argon2::new(algorithm, version, params.clone());
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let blocks = scratch.blocks(params);
    Output::init_with(len, |out| {
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut *blocks)
            .map_err(argon2::password_hash::Error::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_agree_with_argon2_in_both_directions() {
        let mut s = Scratch::new();
        let ours = hash("Passw0rd!", &mut s).expect("hash");
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(
            Argon2::default()
                .verify_password(b"Passw0rd!", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"passw0rd!", &parsed)
                .is_err()
        );

        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"hunter42", &salt)
            .expect("hash")
            .to_string();
        assert!(verify("hunter42", &theirs, &mut s));
        assert!(!verify("hunter43", &theirs, &mut s));
        assert!(!verify("hunter42", "not a hash", &mut s));
        assert!(!verify(
            "hunter42",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            &mut s
        ));
    }

    #[test]
    fn other_parameters_verify_too() {
        let params = Params::new(64, 1, 1, Some(16)).expect("params");
        let salt = SaltString::generate(&mut OsRng);
        let phc = Argon2::new(Algorithm::Argon2i, Version::V0x10, params)
            .hash_password(b"pw-pw-pw", &salt)
            .expect("hash")
            .to_string();
        let mut s = Scratch::new();
        assert!(verify("pw-pw-pw", &phc, &mut s));
        assert!(!verify("pw-pw-px", &phc, &mut s));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_waiting() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Block both workers, fill the queue of 3, and the next job is refused at once.
        let pool = std::sync::Arc::new(HashPool::new(2, 3));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = std::sync::Arc::new(Mutex::new(release_rx));
        let running = std::sync::Arc::new(AtomicUsize::new(0));
        let submit = |held: &mut Vec<tokio::task::JoinHandle<Result<(), IdentityError>>>| {
            let (r, p, n) = (release_rx.clone(), pool.clone(), running.clone());
            held.push(tokio::spawn(async move {
                p.run(move |_| {
                    n.fetch_add(1, Ordering::SeqCst);
                    let _ = r.lock().map(|rx| rx.recv());
                })
                .await
            }));
        };
        let mut held = Vec::new();
        for _ in 0..2 {
            submit(&mut held);
        }
        // However slowly the threads start, both are busy before the queue is filled.
        while running.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for _ in 0..3 {
            submit(&mut held);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let refused = pool.run(|_| ()).await;
        assert!(
            matches!(refused, Err(IdentityError::TooManyRequests(_))),
            "{refused:?}"
        );
        for _ in 0..held.len() {
            let _ = release_tx.send(());
        }
        for h in held {
            h.await.expect("join").expect("job ran");
        }
        pool.run(|_| ()).await.expect("accepted again");
    }
}
