//! plyfs-sys: safe wrappers over the system calls plyfs needs. This crate
//! is the only place in the project that contains `unsafe`: every wrapper
//! checks its arguments and turns the C return convention into a `Result`.
//!
//! Everything here works relative to directory file descriptors with
//! `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`, so callers never build path strings
//! and never follow a symlink inside a layer.

mod errno;
pub mod fileattr;
pub mod fs;
pub mod handle;
pub mod mounts;
pub mod process;
pub mod xattr;

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;

pub use errno::{Errno, Result};

/// Longest name a directory entry may have (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// The last OS error as an [`Errno`].
pub(crate) fn last_errno() -> Errno {
    Errno::from_raw(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Maps the C convention (-1 and errno) of a syscall returning an int.
pub(crate) fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 { Err(last_errno()) } else { Ok(ret) }
}

/// Same for calls returning a size.
pub(crate) fn check_size(ret: isize) -> Result<usize, Errno> {
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(ret as usize)
    }
}

/// Same for raw `syscall()` results.
pub(crate) fn check_long(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 { Err(last_errno()) } else { Ok(ret) }
}

/// Runs `f` with `name` as a NUL-terminated C string, without allocating
/// for names that fit a directory entry. Names with an interior NUL cannot
/// exist on Linux (EINVAL); names longer than a path cannot either.
pub fn with_cstr<T>(name: &OsStr, f: impl FnOnce(&CStr) -> Result<T, Errno>) -> Result<T, Errno> {
    let bytes = name.as_bytes();
    if bytes.len() <= NAME_MAX {
        let mut buf = [0u8; NAME_MAX + 1];
        buf[..bytes.len()].copy_from_slice(bytes);
        let c = CStr::from_bytes_with_nul(&buf[..=bytes.len()]).map_err(|_| Errno::EINVAL)?;
        f(c)
    } else {
        if bytes.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        let c = std::ffi::CString::new(bytes).map_err(|_| Errno::EINVAL)?;
        f(&c)
    }
}
