//! Inode flags (`chattr`, `lsattr`: FS_IOC_GETFLAGS / FS_IOC_SETFLAGS, and
//! their extended form FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR), as
//! the kernel's overlayfs passes them: read from the object the union
//! shows, set on its upper copy (copied up first). The upper's filesystem
//! then enforces them (an immutable file refuses writes, renames and
//! removal; an immutable directory new names), for plyfs as for anyone.

use std::os::fd::{AsFd, BorrowedFd};

use crate::Overlay;
use crate::error::{Errno, Result};
use crate::inode::Ino;
use crate::sys::fileattr::{self as fs, FsXattr};

/// Opens an object for the flag ioctls, which need a real descriptor but
/// no access: no atime, and a FIFO would not wait.
const FLAGS_OPEN: i32 = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOATIME;

impl Overlay {
    /// The inode flags of `ino`.
    pub fn inode_flags(&self, ino: Ino) -> Result<u32> {
        self.with_shown(ino, fs::inode_flags)
    }

    /// Sets the inode flags of `ino` on its upper copy.
    pub fn set_inode_flags(&self, ino: Ino, flags: u32) -> Result<()> {
        self.with_upper(ino, |fd| fs::set_inode_flags(fd, flags))
    }

    /// The extended inode flags of `ino` (`struct fsxattr`).
    pub fn fsxattr(&self, ino: Ino) -> Result<FsXattr> {
        self.with_shown(ino, fs::fsxattr)
    }

    /// Sets the extended inode flags of `ino` on its upper copy.
    pub fn set_fsxattr(&self, ino: Ino, value: &FsXattr) -> Result<()> {
        self.with_upper(ino, |fd| fs::set_fsxattr(fd, value))
    }

    /// Runs `f` on the object the union shows for `ino`, opened.
    fn with_shown<T>(&self, ino: Ino, f: impl FnOnce(BorrowedFd<'_>) -> Result<T>) -> Result<T> {
        let node = self.node(ino)?;
        check_kind(node.kind())?;
        let real = node.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        let fd = real.open(FLAGS_OPEN)?;
        f(fd.as_fd())
    }

    /// Runs `f` on `ino`'s upper copy (made first), opened.
    fn with_upper(&self, ino: Ino, f: impl FnOnce(BorrowedFd<'_>) -> Result<()>) -> Result<()> {
        self.check_writable()?;
        let node = self.node(ino)?;
        check_kind(node.kind())?;
        self.copy_up(&node)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        let fd = upper.open(FLAGS_OPEN)?;
        f(fd.as_fd())
    }
}

/// As the kernel's FUSE asks: regular files and directories only.
fn check_kind(kind: u32) -> Result<()> {
    if kind == libc::S_IFREG || kind == libc::S_IFDIR {
        Ok(())
    } else {
        Err(Errno::ENOTTY)
    }
}
