//! Open files. A handle opened on a lower file switches to the upper copy
//! once the file is copied up (as the kernel's overlayfs does since 4.19),
//! so a reader never sees stale data after another writer's copy-up.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{Errno, Result};
use crate::inode::{Ino, Node};
use crate::sys::fs::{self, SetTime};
use crate::{Overlay, Stat};

/// Flags that only matter when the kernel opens, or for the caller's own
/// descriptor (plyfs's buffers are not aligned for O_DIRECT; the kernel
/// already did the caller's direct I/O): not passed on.
const OPEN_ONLY: i32 =
    libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC | libc::O_DIRECT;

#[derive(Debug)]
pub struct OpenFile {
    node: Arc<Node>,
    flags: i32,
    /// The real file and whether it is the upper copy.
    real: RwLock<(Arc<OwnedFd>, bool)>,
}

impl OpenFile {
    pub fn ino(&self) -> Ino {
        self.node.ino
    }

    pub fn flags(&self) -> i32 {
        self.flags
    }

    /// The descriptor to do I/O on, re-opened on the upper copy if the
    /// file was copied up since it was opened.
    pub fn fd(&self) -> Result<Arc<OwnedFd>> {
        {
            let r = self.real.read();
            if r.1 || !self.node.state.read().data_on_upper() {
                return Ok(r.0.clone());
            }
        }
        let upper = self.node.state.read().upper.clone().ok_or(Errno::EIO)?;
        let fd = Arc::new(upper.open(self.flags & !OPEN_ONLY)?);
        let mut r = self.real.write();
        *r = (fd.clone(), true);
        Ok(fd)
    }

    /// Whether I/O goes to the upper layer.
    pub fn on_upper(&self) -> bool {
        self.real.read().1
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let fd = self.fd()?;
        fs::pread(fd.as_fd(), buf, offset)
    }

    pub fn write(&self, data: &[u8], offset: u64) -> Result<usize> {
        let fd = self.fd()?;
        fs::pwrite(fd.as_fd(), data, offset)
    }

    /// A write under the kernel's writeback cache, which keeps a file's
    /// modification time itself and sends it (SETATTR) whenever it moves
    /// it. Its clock is coarse: a write within the same tick leaves its
    /// time as it was and sends nothing, so the upper's (finer) time of
    /// the write is put back, or a remount would show a time the file
    /// never had.
    pub fn write_keeping_mtime(&self, data: &[u8], offset: u64) -> Result<usize> {
        let fd = self.fd()?;
        let before = fs::fstat(fd.as_fd())?;
        let n = fs::pwrite(fd.as_fd(), data, offset)?;
        let mtime = SetTime::At {
            sec: before.st_mtime,
            nsec: before.st_mtime_nsec,
        };
        // Not being allowed to set it only leaves the finer time.
        let _ = fs::utimens_fd(fd.as_fd(), SetTime::Omit, mtime);
        Ok(n)
    }

    pub fn fallocate(&self, mode: i32, offset: u64, len: u64) -> Result<()> {
        // Only the modes the upper filesystem knows; others say so.
        let fd = self.fd()?;
        fs::fallocate(fd.as_fd(), mode, offset, len)
    }

    pub fn lseek(&self, offset: i64, whence: i32) -> Result<i64> {
        let fd = self.fd()?;
        fs::lseek(fd.as_fd(), offset, whence)
    }

    pub fn stat(&self) -> Result<Stat> {
        let fd = self.fd()?;
        fs::fstat(fd.as_fd())
    }

    /// Runs `f` on the current descriptor (for ftruncate through a handle
    /// and copy_file_range between two handles).
    pub fn with_fd<T>(&self, f: impl FnOnce(BorrowedFd<'_>) -> Result<T>) -> Result<T> {
        let fd = self.fd()?;
        f(fd.as_fd())
    }
}

impl Overlay {
    /// A descriptor of an open file's real file for the kernel to do the
    /// I/O of every open of it on (FUSE passthrough shares one per inode):
    /// read-write for an upper file, whatever this open asked for; the
    /// kernel still checks each open's own mode.
    pub fn backing_fd(&self, file: &OpenFile) -> Result<OwnedFd> {
        let real = file
            .node
            .state
            .read()
            .data_source()
            .cloned()
            .ok_or(Errno::ESTALE)?;
        if self.layers.is_upper(real.layer()) {
            if let Some(fd) = self.open_upper_noatime(&real, libc::O_RDWR) {
                return Ok(fd);
            }
            real.open(libc::O_RDWR | self.config.upper_open_flags())
        } else {
            crate::copy_up::open_lower(&real)
        }
    }

    /// Flushes an open file's data to disk: nothing to do for a lower file
    /// (lowers never change) or in a volatile mount.
    pub fn fsync(&self, file: &OpenFile, datasync: bool) -> Result<()> {
        if self.config.volatile || !file.on_upper() {
            return Ok(());
        }
        file.with_fd(|fd| fs::fsync(fd, datasync))
    }

    /// Copies `len` bytes between two open files in the kernel (a reflink
    /// where the upper's filesystem shares extents); returns how many.
    pub fn copy_file_range(
        &self,
        src: &OpenFile,
        src_offset: u64,
        dst: &OpenFile,
        dst_offset: u64,
        len: u64,
    ) -> Result<usize> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        src.with_fd(|s| dst.with_fd(|d| fs::copy_file_range(s, src_offset, d, dst_offset, len)))
    }

    /// Flushes a directory's upper to disk (nothing to do for a directory
    /// without one: lowers never change).
    pub fn fsyncdir(&self, ino: Ino, datasync: bool) -> Result<()> {
        let node = self.node(ino)?;
        let upper = node.state.read().upper_dir().cloned();
        match upper {
            Some(d) if !self.config.volatile => {
                let fd = fs::openat(
                    d.as_fd(),
                    std::ffi::OsStr::new("."),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )?;
                fs::fsync(fd.as_fd(), datasync)
            }
            _ => Ok(()),
        }
    }

    /// Opens file `ino`. Opening for writing (or with O_TRUNC) copies the
    /// file up first.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<Arc<OpenFile>> {
        // Kept for the re-open on the upper copy too.
        let flags = flags | self.config.upper_open_flags();
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes {
            self.check_writable()?;
            self.copy_up_full(&node)?;
        }
        let real = node
            .state
            .read()
            .data_source()
            .cloned()
            .ok_or(Errno::ESTALE)?;
        let upper = self.layers.is_upper(real.layer());
        let pass = flags & !OPEN_ONLY;
        let fd = if upper {
            real.open_file(pass | (flags & libc::O_TRUNC))?
        } else {
            crate::copy_up::open_lower(&real).and_then(|fd| {
                // open_lower is read-only; anything else a lower file is
                // opened for was copied up above.
                if pass & libc::O_ACCMODE == libc::O_RDONLY {
                    Ok(fd)
                } else {
                    Err(Errno::EROFS)
                }
            })?
        };
        Ok(Arc::new(OpenFile {
            node,
            flags,
            real: RwLock::new((Arc::new(fd), upper)),
        }))
    }

    /// Creates and opens `name` in `parent` (O_CREAT); fails with EEXIST
    /// when it exists and `flags` has O_EXCL, opens it otherwise.
    pub fn create(
        &self,
        parent: Ino,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: i32,
        caller: crate::Caller,
    ) -> Result<(crate::Entry, Arc<OpenFile>)> {
        let entry = match self.make(
            parent,
            name,
            libc::S_IFREG | (mode & 0o7777),
            0,
            None,
            caller,
        ) {
            Ok(e) => e,
            Err(e) if e == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                self.lookup(parent, name)?
            }
            Err(e) => return Err(e),
        };
        let file = match self.open(entry.ino, flags) {
            Ok(f) => f,
            Err(e) => {
                self.forget(entry.ino, 1);
                return Err(e);
            }
        };
        let attr = if flags & libc::O_TRUNC != 0 {
            self.getattr(entry.ino)?
        } else {
            entry.attr
        };
        Ok((crate::Entry { attr, ..entry }, file))
    }
}
