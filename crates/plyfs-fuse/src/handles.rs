//! Open files: plyfs's handle numbers, the core's open file behind each,
//! and how the kernel does its I/O (passthrough or page cache).

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use fuser::{BackingId, FileHandle, KernelConfig};
use plyfs_core::{Errno, OpenFile, Overlay};

use crate::FuseOptions;
use crate::passthrough::{Answer, Passthrough};

/// An open file, and the backing the kernel reads and writes directly
/// when in passthrough.
struct Handle {
    file: Arc<OpenFile>,
    backing: Option<Arc<BackingId>>,
}

pub(crate) struct Handles {
    files: DashMap<u64, Handle>,
    next: AtomicU64,
    pub(crate) passthrough: Passthrough,
    /// The kernel caches writes (negotiated at init).
    pub(crate) writeback: bool,
}

impl Handles {
    pub(crate) fn new() -> Handles {
        Handles {
            files: DashMap::new(),
            next: AtomicU64::new(1),
            passthrough: Passthrough::new(),
            writeback: false,
        }
    }

    /// Chooses how file data moves, at the session's start: passthrough
    /// where the kernel and our privileges allow it, else the writeback
    /// cache where wanted (the kernel takes one or the other). Returns a
    /// description for the log.
    pub(crate) fn negotiate(
        &mut self,
        config: &mut KernelConfig,
        opts: &FuseOptions,
        writable: bool,
    ) -> &'static str {
        use fuser::InitFlags as F;
        // The backing registration of the first open would fail without
        // the privilege.
        if opts.passthrough
            && config.capabilities().contains(F::FUSE_PASSTHROUGH)
            && plyfs_core::process::may_use_passthrough()
            && config.add_capabilities(F::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.enable();
            return "passthrough";
        }
        if opts.writeback && writable && config.add_capabilities(F::FUSE_WRITEBACK_CACHE).is_ok() {
            // Safe because only plyfs changes the upper, and only on the
            // kernel's requests: the sizes and times the kernel keeps
            // while it caches writes are the true ones.
            self.writeback = true;
            return "through plyfs, writeback cache";
        }
        "through plyfs"
    }

    /// The flags to open with. With the writeback cache, the kernel reads
    /// the rest of a page around a partial write through whichever open
    /// wrote, and appends at the end of file as it knows it: an open for
    /// writing is made read-write, and O_APPEND is left to the kernel.
    pub(crate) fn open_flags(&self, flags: i32) -> i32 {
        if !self.writeback {
            return flags;
        }
        let flags = flags & !libc::O_APPEND;
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            (flags & !libc::O_ACCMODE) | libc::O_RDWR
        } else {
            flags
        }
    }

    /// Decides how the kernel does the I/O of a new open of `ino`
    /// (passthrough or page cache) and records the handle, before the
    /// kernel hears of it: the next request on it may come at once.
    pub(crate) fn opened(
        &self,
        ov: &Overlay,
        ino: u64,
        file: Arc<OpenFile>,
        register: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> (FileHandle, Answer) {
        let answer =
            self.passthrough
                .answer(ino, &file, ov.writable(), || ov.backing_fd(&file), register);
        let backing = match &answer {
            Answer::Passthrough(id) => Some(id.clone()),
            Answer::Plain(_) => None,
        };
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.files.insert(fh, Handle { file, backing });
        (FileHandle(fh), answer)
    }

    pub(crate) fn get(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .get(&fh.0)
            .map(|h| h.file.clone())
            .ok_or(Errno::EBADF)
    }

    /// The kernel closed its last use of `fh`.
    pub(crate) fn release(&self, ino: u64, fh: FileHandle) {
        if let Some((_, h)) = self.files.remove(&fh.0) {
            let had_backing = h.backing.is_some();
            drop(h);
            self.passthrough.released(ino, had_backing);
        }
    }
}
