//! Argon2id work, off the async runtime and bounded.
//!
//! A verification costs ~19 MiB of memory and tens of milliseconds of CPU. Run unbounded (one
//! blocking thread per login), a burst of logins, honest or hostile, takes gigabytes: each
//! thread's allocator arena keeps its 19 MiB. So hashing runs on a fixed pool of one thread per
//! core, each reusing its own block buffer, behind a bounded queue; when the queue is full the
//! login is answered "try again later" instead of growing memory.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::{IdentityError, Password};

/// Logins that may wait for a hashing thread before new ones are turned away.
const QUEUE: usize = 1024;

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

pub struct HashPool {
    jobs: SyncSender<Job>,
}

impl HashPool {
    pub fn new() -> Result<Arc<HashPool>, IdentityError> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&queue))
                .map_err(|e| IdentityError::Hash(e.to_string()))?;
        }
        Ok(Arc::new(HashPool { jobs }))
    }

    /// Runs `work` on a hashing thread with that thread's reusable block buffer.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, IdentityError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |blocks| {
            let _ = done.send(work(blocks));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(IdentityError::Busy),
            Err(TrySendError::Disconnected(_)) => {
                return Err(IdentityError::Hash("hashing threads stopped".into()));
            }
        }
        result
            .await
            .map_err(|_| IdentityError::Hash("hashing thread failed".into()))
    }
}

fn worker(queue: &Mutex<Receiver<Job>>) {
    let mut blocks = Vec::new();
    loop {
        let job = match queue.lock() {
            Ok(receiver) => receiver.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => job(&mut blocks),
            Err(_) => return,
        }
    }
}

/// Checks `password` against an Argon2id PHC string, computing in `blocks` (resized as needed)
/// and comparing in constant time.
pub fn verify_in(password: &Password, phc: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        tracing::error!("a stored password hash cannot be parsed; the account cannot log in");
        return false;
    };
    if hash.algorithm != Algorithm::Argon2id.ident() {
        return false;
    }
    let (Ok(params), Some(salt), Some(expected)) = (Params::try_from(&hash), hash.salt, hash.hash) else {
        return false;
    };
    let needed = params.block_count();
    if blocks.len() < needed {
        blocks.resize(needed, Block::default());
    }
    let argon2 = Argon2::new(Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = vec![0u8; expected.len()];
    if argon2
        .hash_password_into_with_memory(
            password.expose().as_bytes(),
            &salt,
            &mut out,
            &mut blocks[..needed],
        )
        .is_err()
    {
        return false;
    }
    out.ct_eq(expected.as_bytes()).into()
}
