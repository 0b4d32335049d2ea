//! Read-ahead for tree walks: when a union directory is listed, its lower
//! subdirectories are read and their entries stat'ed in the background.
//!
//! A walk through FUSE waits for a round trip per directory, during which
//! the disk sits idle; the kernel's own overlayfs has no such gaps. Warming
//! the lower filesystem's dentry and inode caches for the directories the
//! walker is about to enter overlaps their disk reads with those round
//! trips. Only caches of the lower filesystems are touched: nothing plyfs
//! answers depends on whether a job ran, and jobs that do not fit the
//! queue are dropped.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use parking_lot::Mutex;

use crate::sys::fs;

/// Directories waiting; beyond this the walker is far ahead or far behind
/// and read-ahead would only add load.
const QUEUE: usize = 1024;
const WORKERS: usize = 2;

/// One lower directory to warm: `name` in the directory `parent`.
struct Job {
    parent: Arc<OwnedFd>,
    name: OsString,
}

pub(crate) struct Prefetcher {
    queue: SyncSender<Job>,
}

impl std::fmt::Debug for Prefetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prefetcher")
    }
}

impl Prefetcher {
    /// Starts the workers; they end once the prefetcher is dropped. `None`
    /// if no thread can be started (plyfs then simply does without).
    pub(crate) fn start() -> Option<Prefetcher> {
        let (queue, jobs) = sync_channel(QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..WORKERS {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("plyfs-prefetch-{i}"))
                .spawn(move || work(&jobs));
            if let Err(e) = spawned {
                tracing::debug!("no read-ahead thread: {e}");
                if i == 0 {
                    return None;
                }
            }
        }
        Some(Prefetcher { queue })
    }

    /// Asks for `name` under the lower directory `parent` to be warmed;
    /// false once the queue is full (the caller can stop offering).
    pub(crate) fn offer(&self, parent: &Arc<OwnedFd>, name: &std::ffi::OsStr) -> bool {
        let job = Job {
            parent: parent.clone(),
            name: name.to_os_string(),
        };
        match self.queue.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only to take a job, never while doing one.
        let job = jobs.lock().recv();
        let Ok(job) = job else { return };
        warm(&job);
    }
}

/// Lists the directory and stats each entry; errors are of no interest
/// (the foreground request that needs the entry reports its own).
fn warm(job: &Job) {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let Ok(dir) = fs::openat(job.parent.as_fd(), &job.name, flags, 0) else {
        return;
    };
    let mut names = Vec::new();
    if fs::read_dir(dir.as_fd(), |e| names.push(e.name.to_os_string())).is_err() {
        return;
    }
    for name in names {
        let _ = fs::fstatat(dir.as_fd(), &name);
    }
}
