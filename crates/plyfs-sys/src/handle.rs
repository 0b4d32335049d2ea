//! File handles (name_to_handle_at / open_by_handle_at) and filesystem
//! UUIDs: what the kernel's overlayfs stores as a copy-up origin.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{check, with_cstr};
use crate::errno::{Errno, Result};

/// MAX_HANDLE_SZ in the kernel.
const MAX_HANDLE_SZ: usize = 128;

/// An opaque handle identifying an inode within its filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// AT_HANDLE_FID: a handle that identifies, not one to open (fanotify's).
const AT_HANDLE_FID: libc::c_int = 0x200;

/// The handle of `name` in `dir` (not following a symlink).
pub fn name_to_handle_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<FileHandle> {
    encode(dir, name, 0)
}

/// The identifying handle (AT_HANDLE_FID) of `name` in `dir`, which some
/// filesystems give where they cannot open handles.
pub fn name_to_fid_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<FileHandle> {
    encode(dir, name, AT_HANDLE_FID)
}

fn encode(dir: BorrowedFd<'_>, name: &OsStr, extra: libc::c_int) -> Result<FileHandle> {
    with_cstr(name, |c| {
        let mut raw = RawHandle {
            handle_bytes: MAX_HANDLE_SZ as u32,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_SZ],
        };
        let mut mount_id: libc::c_int = 0;
        let flags = extra
            | if name.is_empty() {
                libc::AT_EMPTY_PATH
            } else {
                0
            };
        // SAFETY: `raw` starts with the file_handle header and has room for
        // MAX_HANDLE_SZ bytes, as handle_bytes says.
        check(unsafe {
            libc::name_to_handle_at(
                dir.as_raw_fd(),
                c.as_ptr(),
                (&mut raw as *mut RawHandle).cast(),
                &mut mount_id,
                flags,
            )
        })?;
        let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
        Ok(FileHandle {
            handle_type: raw.handle_type,
            bytes: raw.f_handle[..len].to_vec(),
        })
    })
}

/// Opens the inode a handle names, on the filesystem `mount_fd` is on.
/// Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle_at(mount_fd: BorrowedFd<'_>, h: &FileHandle, flags: i32) -> Result<OwnedFd> {
    if h.bytes.len() > MAX_HANDLE_SZ {
        return Err(Errno::EINVAL);
    }
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as u32,
        handle_type: h.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `raw` is a complete file_handle; the fd returned is owned.
    let fd = check(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut raw as *mut RawHandle).cast(),
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
struct FsUuid2 {
    len: u8,
    uuid: [u8; 16],
}

// _IOR(0x15, 0, struct fsuuid2)
const FS_IOC_GETFSUUID: libc::c_ulong =
    (2 << 30) | ((std::mem::size_of::<FsUuid2>() as libc::c_ulong) << 16) | (0x15 << 8);

/// The UUID of the filesystem `fd` is on (all zeros when it has none).
pub fn fs_uuid(fd: BorrowedFd<'_>) -> Result<[u8; 16]> {
    let mut out = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // The ioctl needs a descriptor that is not O_PATH.
    let dir = super::fs::openat_c(fd, super::fs::DOT, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: the struct matches the kernel's fsuuid2 layout.
    check(unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_GETFSUUID, &mut out as *mut FsUuid2) })?;
    let mut uuid = [0u8; 16];
    let n = (out.len as usize).min(16);
    uuid[..n].copy_from_slice(&out.uuid[..n]);
    Ok(uuid)
}
