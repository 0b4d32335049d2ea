//! Inode flags (`chattr`'s immutable, append-only, ...) and their
//! extended form, by ioctl on an open (not `O_PATH`) descriptor.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;
use crate::errno::Result;

/// The inode flags (`chattr`'s: immutable, append-only, ...) of an open
/// (not `O_PATH`) file or directory.
pub fn inode_flags(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int, which `flags` is.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) })?;
    Ok(flags as u32)
}

/// Sets the inode flags of an open (not `O_PATH`) file or directory.
pub fn set_inode_flags(fd: BorrowedFd<'_>, flags: u32) -> Result<()> {
    let flags = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one int, which `flags` is.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) }).map(drop)
}

/// `struct fsxattr`, as bytes: the extended inode flags and their fields.
pub type FsXattr = [u8; 28];

// _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct fsxattr).
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

/// The extended inode flags of an open file or directory (FS_IOC_FSGETXATTR).
pub fn fsxattr(fd: BorrowedFd<'_>) -> Result<FsXattr> {
    let mut buf: FsXattr = [0; 28];
    // SAFETY: the ioctl writes a struct fsxattr, 28 bytes, into `buf`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, buf.as_mut_ptr()) })?;
    Ok(buf)
}

/// Sets the extended inode flags of an open file or directory.
pub fn set_fsxattr(fd: BorrowedFd<'_>, value: &FsXattr) -> Result<()> {
    // SAFETY: the ioctl reads a struct fsxattr, 28 bytes, from `value`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, value.as_ptr()) }).map(drop)
}
