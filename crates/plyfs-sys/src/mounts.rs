//! Detached mounts (open_tree, mount_setattr): a private view of a layer
//! with other mount attributes than the one it lives on.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{check, check_long};
use crate::errno::Result;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
/// The access-time mode bits, cleared when one mode is set.
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;

/// `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached bind mount of the directory `dir` (any descriptor, `O_PATH`
/// included) on which access times are never updated. Objects opened
/// through it (by handle) are the same inodes, read without touching
/// their atimes even by the kernel's own reads of them, whatever their
/// flags say (FUSE passthrough reopens a backing file with the caller's).
/// Needs CAP_SYS_ADMIN.
pub fn noatime_clone(dir: BorrowedFd<'_>) -> Result<OwnedFd> {
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: an empty NUL-terminated path and a valid descriptor; the
    // result is a fresh descriptor we own.
    let raw = check_long(unsafe {
        libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), c"".as_ptr(), flags)
    })?;
    // SAFETY: the kernel just returned this descriptor.
    let tree = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR_ATIME_MASK,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a complete struct mount_attr of the size given.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    } as libc::c_int)?;
    // open_by_handle_at wants a descriptor that is not O_PATH, as the
    // tree's is; an open directory keeps the detached mount alive alone.
    super::fs::openat_c(
        tree.as_fd(),
        super::fs::DOT,
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
}
