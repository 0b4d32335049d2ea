//! Extended attributes of `name` in a directory descriptor, never following
//! a symlink. Uses the `*xattrat` calls (Linux 6.13); on older kernels falls
//! back to the `l*xattr` calls on `/proc/self/fd/DIR/NAME`, which resolves
//! the directory through its descriptor and does not follow `NAME`.
//!
//! An empty `name` means the object `dir` itself refers to, which may be
//! an `O_PATH` descriptor of any kind of file (an unlinked file plyfs keeps
//! pinned): `/proc/self/fd/N` is then followed, as it leads to that very
//! inode. Every call passes its flags to the kernel, so `XATTR_CREATE` and
//! `XATTR_REPLACE` are atomic whatever the object.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{check_long, check_size, with_cstr};
use crate::errno::{Errno, Result};

// Same numbers on every architecture (the unified syscall table).
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

/// Largest value the VFS accepts (XATTR_SIZE_MAX).
pub const VALUE_MAX: usize = 65536;
/// Largest name list the VFS returns (XATTR_LIST_MAX).
pub const LIST_MAX: usize = 65536;

pub const CREATE: i32 = libc::XATTR_CREATE;
pub const REPLACE: i32 = libc::XATTR_REPLACE;

fn xname(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name.to_bytes());
    }
    // Cannot contain NUL: both parts come from C strings.
    CString::new(p).unwrap_or_default()
}

/// How a path-based call treats the last component.
#[derive(Clone, Copy)]
enum Follow {
    /// `/proc/self/fd/N`: the magic link leads to the object itself.
    Yes,
    /// `/proc/self/fd/DIR/NAME`: NAME may be a symlink, which is the object.
    No,
}

/// Runs the `*at` form (with the C name), or the path form (with a
/// `/proc/self/fd` path) for descriptor-only objects and on kernels
/// without the `*at` calls.
fn dispatch(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    at: impl FnOnce(&CStr) -> Result<libc::c_long>,
    by_path: impl FnOnce(&CStr, Follow) -> Result<libc::c_long>,
) -> Result<libc::c_long> {
    if name.is_empty() {
        return by_path(&proc_path(dir, c""), Follow::Yes);
    }
    with_cstr(name, |n| {
        if !NO_XATTRAT.load(Ordering::Relaxed) {
            match at(n) {
                Err(e) if e == Errno::ENOSYS => NO_XATTRAT.store(true, Ordering::Relaxed),
                r => return r,
            }
        }
        by_path(&proc_path(dir, n), Follow::No)
    })
}

/// Reads attribute `attr` of `name` in `dir` into `buf`; an empty `buf`
/// asks for the size. `name` may be `"."` for the directory itself.
pub fn get(dir: BorrowedFd<'_>, name: &OsStr, attr: &OsStr, buf: &mut [u8]) -> Result<usize> {
    let a = xname(attr)?;
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr()
    };
    let len = buf.len();
    let r = dispatch(
        dir,
        name,
        |n| {
            let mut args = XattrArgs {
                value: ptr as u64,
                size: len as u32,
                flags: 0,
            };
            // SAFETY: args points to a live struct whose value pointer
            // is valid for `size` bytes; names are NUL-terminated.
            check_long(unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    dir.as_raw_fd(),
                    n.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    a.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            })
        },
        |p, follow| {
            // SAFETY: valid strings and buffer.
            check_size(unsafe {
                match follow {
                    Follow::Yes => libc::getxattr(p.as_ptr(), a.as_ptr(), ptr.cast(), len),
                    Follow::No => libc::lgetxattr(p.as_ptr(), a.as_ptr(), ptr.cast(), len),
                }
            })
            .map(|s| s as libc::c_long)
        },
    )?;
    Ok(r as usize)
}

/// The whole value of an attribute, `None` when it is not set.
pub fn get_vec(dir: BorrowedFd<'_>, name: &OsStr, attr: &OsStr) -> Result<Option<Vec<u8>>> {
    // Most values plyfs reads are tiny; try a small buffer first.
    let mut buf = vec![0u8; 256];
    loop {
        match get(dir, name, attr, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) if e == Errno::ENODATA => return Ok(None),
            Err(e) if e == Errno::ERANGE && buf.len() < VALUE_MAX => {
                let size = get(dir, name, attr, &mut [])?;
                buf = vec![0u8; size.max(buf.len() * 2).min(VALUE_MAX)];
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sets an attribute; `flags` are [`CREATE`] / [`REPLACE`] (or 0).
pub fn set(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attr: &OsStr,
    value: &[u8],
    flags: i32,
) -> Result<()> {
    let a = xname(attr)?;
    dispatch(
        dir,
        name,
        |n| {
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: value.len() as u32,
                flags: flags as u32,
            };
            // SAFETY: args is live and its pointer valid for `size`.
            check_long(unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    dir.as_raw_fd(),
                    n.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    a.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            })
        },
        |p, follow| {
            let (v, len) = (value.as_ptr().cast(), value.len());
            // SAFETY: valid strings and value buffer.
            check_long(unsafe {
                match follow {
                    Follow::Yes => libc::setxattr(p.as_ptr(), a.as_ptr(), v, len, flags),
                    Follow::No => libc::lsetxattr(p.as_ptr(), a.as_ptr(), v, len, flags),
                }
            } as libc::c_long)
        },
    )
    .map(drop)
}

/// The NUL-separated attribute names; an empty `buf` asks for the size.
pub fn list(dir: BorrowedFd<'_>, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr()
    };
    let len = buf.len();
    dispatch(
        dir,
        name,
        |n| {
            // SAFETY: buffer valid for its length, name NUL-terminated.
            check_long(unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    n.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    ptr,
                    len,
                )
            })
        },
        |p, follow| {
            // SAFETY: valid path and buffer.
            check_size(unsafe {
                match follow {
                    Follow::Yes => libc::listxattr(p.as_ptr(), ptr.cast(), len),
                    Follow::No => libc::llistxattr(p.as_ptr(), ptr.cast(), len),
                }
            })
            .map(|s| s as libc::c_long)
        },
    )
    .map(|r| r as usize)
}

/// All attribute names of `name`.
pub fn list_vec(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 512];
    loop {
        match list(dir, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e == Errno::ERANGE && buf.len() < LIST_MAX => {
                let size = list(dir, name, &mut [])?;
                buf = vec![0u8; size.max(buf.len() * 2).min(LIST_MAX)];
            }
            Err(e) => return Err(e),
        }
    }
}

pub fn remove(dir: BorrowedFd<'_>, name: &OsStr, attr: &OsStr) -> Result<()> {
    let a = xname(attr)?;
    dispatch(
        dir,
        name,
        |n| {
            // SAFETY: NUL-terminated strings, valid fd.
            check_long(unsafe {
                libc::syscall(
                    SYS_REMOVEXATTRAT,
                    dir.as_raw_fd(),
                    n.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    a.as_ptr(),
                )
            })
        },
        |p, follow| {
            // SAFETY: NUL-terminated strings.
            check_long(unsafe {
                match follow {
                    Follow::Yes => libc::removexattr(p.as_ptr(), a.as_ptr()),
                    Follow::No => libc::lremovexattr(p.as_ptr(), a.as_ptr()),
                }
            } as libc::c_long)
        },
    )
    .map(drop)
}

/// Splits a NUL-separated name list.
pub fn split_names(list: &[u8]) -> impl Iterator<Item = &OsStr> {
    list.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(OsStr::from_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs;
    use std::os::fd::AsFd;

    /// A pinned (O_PATH) file, even unlinked, is reached through its
    /// descriptor, and the flags are the kernel's.
    #[test]
    fn descriptor_only_objects_and_flags() {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::write(t.path().join("f"), b"").unwrap();
        let dir = fs::open_path(t.path(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let pinned = fs::openat(dir.as_fd(), OsStr::new("f"), libc::O_PATH, 0).unwrap();
        fs::unlinkat(dir.as_fd(), OsStr::new("f"), false).unwrap();
        let (o, a) = (OsStr::new(""), OsStr::new("user.k"));
        assert_eq!(
            set(pinned.as_fd(), o, a, b"v", REPLACE),
            Err(Errno::ENODATA)
        );
        set(pinned.as_fd(), o, a, b"v", CREATE).unwrap();
        assert_eq!(set(pinned.as_fd(), o, a, b"w", CREATE), Err(Errno::EEXIST));
        set(pinned.as_fd(), o, a, b"w", REPLACE).unwrap();
        assert_eq!(get_vec(pinned.as_fd(), o, a).unwrap(), Some(b"w".to_vec()));
        assert_eq!(list_vec(pinned.as_fd(), o).unwrap(), b"user.k\0");
        remove(pinned.as_fd(), o, a).unwrap();
        assert_eq!(get_vec(pinned.as_fd(), o, a).unwrap(), None);
    }
}
