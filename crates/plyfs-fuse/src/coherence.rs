//! Cache coherence: what plyfs tells the kernel to forget.
//!
//! The kernel may cache entries, attributes and listings for as long as
//! the mount lives, because every change goes through it. Two things do
//! not: changes plyfs makes on its own (a directory copied up becomes
//! merged), which the core reports through its invalidator, and replies
//! to reads that raced with a change and reached the kernel after it.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use fuser::{INodeNo, Notifier};
use plyfs_core::Overlay;
use tracing::debug;

pub(crate) struct Coherence {
    /// Requests reading attributes or listings, in flight, by inode.
    reading: DashMap<u64, u32>,
    /// Set once the session exists.
    notifier: Arc<OnceLock<Notifier>>,
}

/// Counts a read of `ino`'s attributes or listing until dropped (after
/// the reply went out).
pub(crate) struct Reading<'a> {
    c: &'a Coherence,
    ino: u64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.c.reading.remove_if_mut(&self.ino, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl Coherence {
    pub(crate) fn new(notifier: Arc<OnceLock<Notifier>>) -> Coherence {
        Coherence {
            reading: DashMap::new(),
            notifier,
        }
    }

    pub(crate) fn reading(&self, ino: u64) -> Reading<'_> {
        *self.reading.entry(ino).or_insert(0) += 1;
        Reading { c: self, ino }
    }

    /// After a change to `ino` was answered: a read of it answered
    /// concurrently may have reached the kernel after the change and be
    /// cached as current. An explicit invalidation (which the kernel
    /// orders against such replies) drops it. Nothing to do, and nothing
    /// done, when no read was in flight. `listing`: also its cached
    /// directory listing.
    pub(crate) fn changed(&self, ino: u64, listing: bool) {
        if !self.reading.contains_key(&ino) {
            return;
        }
        if let Some(n) = self.notifier.get() {
            let offset = if listing { 0 } else { -1 };
            if let Err(e) = n.inval_inode(INodeNo(ino), offset, 0) {
                debug!("invalidation of {ino} failed: {e}");
            }
        }
    }
}

impl Coherence {
    /// Drops the kernel's cached attributes of `ino` (not its pages),
    /// whether or not a read is in flight.
    pub(crate) fn forget_attrs(&self, ino: u64) {
        if let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(INodeNo(ino), -1, 0)
        {
            debug!("attribute invalidation of {ino} failed: {e}");
        }
    }
}

/// Has the core tell the kernel about attributes it changes on its own.
pub(crate) fn install(ov: &Overlay, notifier: Notifier) {
    ov.set_invalidator(Box::new(move |ino| {
        // Attributes only (a negative offset keeps the page cache).
        if let Err(e) = notifier.inval_inode(INodeNo(ino), -1, 0) {
            debug!("attribute invalidation of {ino} failed: {e}");
        }
    }));
}
