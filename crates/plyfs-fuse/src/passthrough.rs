//! FUSE passthrough: open files are handed to the kernel as backing files,
//! so their data never crosses into userspace.
//!
//! The kernel keeps one I/O mode per inode while it is open: either every
//! open is passthrough with the same backing file, or none is (a plain open
//! of an inode in passthrough fails with EIO, and the reverse with EBUSY).
//! A lower file's backing cannot become its upper copy, so in a writable
//! mount lower files are opened page-cached, and copy-up can happen under
//! them as the kernel's overlayfs allows. Upper files, and every file of a
//! read-only mount, go through passthrough; an inode's later opens follow
//! the mode it is in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use fuser::{BackingId, FopenFlags};
use plyfs_core::OpenFile;
use tracing::{debug, info};

/// How an open is answered.
pub(crate) enum Answer {
    Passthrough(Arc<BackingId>),
    Plain(FopenFlags),
}

/// The I/O mode an inode is open in.
enum Mode {
    Backing(Weak<BackingId>),
    /// Page-cached opens, counted.
    Cached(usize),
}

pub(crate) struct Passthrough {
    /// Negotiated with the kernel, and not refused since.
    enabled: AtomicBool,
    modes: DashMap<u64, Mode>,
}

impl Passthrough {
    pub(crate) fn new() -> Passthrough {
        Passthrough {
            enabled: AtomicBool::new(false),
            modes: DashMap::new(),
        }
    }

    pub(crate) fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Decides how to answer an open of `ino`; `register` asks the kernel
    /// for a backing id of a descriptor. `writable`: the union takes
    /// changes (so a lower file may be copied up while open).
    pub(crate) fn answer(
        &self,
        ino: u64,
        file: &OpenFile,
        writable: bool,
        backing: impl FnOnce() -> plyfs_core::Result<std::os::fd::OwnedFd>,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> Answer {
        if !self.enabled() {
            return Answer::Plain(FopenFlags::FOPEN_KEEP_CACHE);
        }
        // The entry lock makes concurrent opens of one inode agree.
        let mut entry = self.modes.entry(ino);
        match &mut entry {
            Entry::Occupied(o) => match o.get_mut() {
                Mode::Backing(w) => {
                    if let Some(id) = w.upgrade() {
                        return Answer::Passthrough(id);
                    }
                }
                Mode::Cached(n) if *n > 0 => {
                    *n += 1;
                    return Answer::Plain(FopenFlags::FOPEN_KEEP_CACHE);
                }
                Mode::Cached(_) => {}
            },
            Entry::Vacant(_) => {}
        }
        let cached = || {
            debug!(ino, "page-cached open");
            Answer::Plain(FopenFlags::FOPEN_KEEP_CACHE)
        };
        let answer = if writable && !file.on_upper() {
            cached()
        } else {
            // The kernel keeps its own reference: our descriptor can go.
            // A real file plyfs cannot open read-write (a read-only file in
            // a rootless mount, one being executed) is served page-cached;
            // only the kernel refusing a backing turns passthrough off.
            match backing() {
                Err(e) => {
                    debug!(ino, "no backing for this file ({e})");
                    cached()
                }
                Ok(fd) => match register(std::os::fd::AsFd::as_fd(&fd)) {
                    Ok(id) => Answer::Passthrough(Arc::new(id)),
                    Err(e) => {
                        let e = plyfs_core::Errno::from(e);
                        if e == plyfs_core::Errno::EPERM || e == plyfs_core::Errno::EACCES {
                            info!("FUSE passthrough refused ({e}); file data goes through plyfs");
                            self.enabled.store(false, Ordering::Relaxed);
                        } else {
                            debug!(ino, "no backing for this file ({e})");
                        }
                        cached()
                    }
                },
            }
        };
        let mode = match &answer {
            Answer::Passthrough(id) => Mode::Backing(Arc::downgrade(id)),
            Answer::Plain(_) => Mode::Cached(1),
        };
        match entry {
            Entry::Occupied(mut o) => {
                o.insert(mode);
            }
            Entry::Vacant(v) => {
                v.insert(mode);
            }
        }
        answer
    }

    /// Whether `ino` is open in passthrough: the kernel reads and writes
    /// it without plyfs, and writes through a shared mmap of the backing
    /// file change its times without the kernel's FUSE noticing.
    pub(crate) fn in_passthrough(&self, ino: u64) -> bool {
        self.modes
            .get(&ino)
            .is_some_and(|m| matches!(*m, Mode::Backing(_)))
    }

    /// After a handle was released (its backing, if any, dropped already).
    pub(crate) fn released(&self, ino: u64, had_backing: bool) {
        if let Entry::Occupied(mut o) = self.modes.entry(ino) {
            let gone = match o.get_mut() {
                Mode::Backing(w) => had_backing && w.strong_count() == 0,
                Mode::Cached(n) => {
                    if !had_backing {
                        *n = n.saturating_sub(1);
                    }
                    *n == 0
                }
            };
            if gone {
                o.remove();
            }
        }
    }
}
