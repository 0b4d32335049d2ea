//! File and directory system calls relative to directory file descriptors.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::{check, check_long, check_size, last_errno, with_cstr};
use crate::errno::{Errno, Result};

pub type Stat = libc::stat;

/// `"."` as a C string: the directory a descriptor refers to.
pub const DOT: &CStr = c".";
/// The empty path, for `AT_EMPTY_PATH` calls on the descriptor itself.
pub const EMPTY: &CStr = c"";

/// Opens `name` relative to `dir`. `O_CLOEXEC` is always added; callers
/// add `O_NOFOLLOW` (every open inside a layer does).
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    with_cstr(name, |c| openat_c(dir, c, flags, mode))
}

/// O_NOATIME is a wish: where it is not permitted (a file of another
/// user, without CAP_FOWNER) the open is made without it.
pub fn openat_c(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    match openat_raw(dir, name, flags, mode) {
        Err(e) if e == Errno::EPERM && flags & libc::O_NOATIME != 0 => {
            openat_raw(dir, name, flags & !libc::O_NOATIME, mode)
        }
        r => r,
    }
}

fn openat_raw(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the returned fd is fresh and owned.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a path given by the user (a layer root), following symlinks.
pub fn open_path(path: &Path, flags: i32) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is NUL-terminated; the returned fd is owned.
    let fd = check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a descriptor again with new flags, e.g. an `O_PATH` handle for
/// reading. Goes through `/proc/self/fd`, which names the very inode the
/// descriptor refers to, whatever happened to its path since.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    open_path(Path::new(&path), flags)
}

fn stat_from(f: impl FnOnce(*mut Stat) -> libc::c_int) -> Result<Stat> {
    let mut st = std::mem::MaybeUninit::<Stat>::uninit();
    check(f(st.as_mut_ptr()))?;
    // SAFETY: the call succeeded, so the kernel filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn fstatat(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Stat> {
    with_cstr(name, |c| fstatat_c(dir, c))
}

pub fn fstatat_c(dir: BorrowedFd<'_>, name: &CStr) -> Result<Stat> {
    // SAFETY: valid fd, NUL-terminated name, struct pointer from stat_from.
    stat_from(|st| unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `fstat` of any descriptor, `O_PATH` ones included.
pub fn fstat(fd: BorrowedFd<'_>) -> Result<Stat> {
    // SAFETY: an empty path with AT_EMPTY_PATH stats the descriptor itself.
    stat_from(|st| unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    with_cstr(name, |c| {
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
    })
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    with_cstr(name, |c| {
        check(unsafe {
            libc::mknodat(
                dir.as_raw_fd(),
                c.as_ptr(),
                mode as libc::mode_t,
                rdev as libc::dev_t,
            )
        })
        .map(drop)
    })
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let t = std::ffi::CString::new(target.as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both strings are NUL-terminated, fd valid.
    with_cstr(name, |c| {
        check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
    })
}

/// `linkat` without following a symlink at the source.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
) -> Result<()> {
    with_cstr(oldname, |o| {
        with_cstr(newname, |n| {
            // SAFETY: valid fds, NUL-terminated names.
            check(unsafe {
                libc::linkat(
                    olddir.as_raw_fd(),
                    o.as_ptr(),
                    newdir.as_raw_fd(),
                    n.as_ptr(),
                    0,
                )
            })
            .map(drop)
        })
    })
}

/// Links the object an `O_PATH` descriptor refers to as `newname`, through
/// `/proc/self/fd` (which, unlike AT_EMPTY_PATH, needs no privilege).
pub fn linkat_fd(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, newname: &OsStr) -> Result<()> {
    let src = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| Errno::EINVAL)?;
    with_cstr(newname, |n| {
        // SAFETY: NUL-terminated strings, valid fds.
        check(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                src.as_ptr(),
                newdir.as_raw_fd(),
                n.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })
        .map(drop)
    })
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd, NUL-terminated name.
    with_cstr(name, |c| {
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
    })
}

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;
pub const RENAME_WHITEOUT: u32 = libc::RENAME_WHITEOUT;

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
    flags: u32,
) -> Result<()> {
    with_cstr(oldname, |o| {
        with_cstr(newname, |n| {
            // SAFETY: valid fds, NUL-terminated names.
            check(unsafe {
                libc::renameat2(
                    olddir.as_raw_fd(),
                    o.as_ptr(),
                    newdir.as_raw_fd(),
                    n.as_ptr(),
                    flags as libc::c_uint,
                )
            })
            .map(drop)
        })
    })
}

/// Reads the target of the symlink `name` in `dir`; an empty `name` reads
/// the symlink an `O_PATH` descriptor refers to.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<u8>> {
    with_cstr(name, |c| {
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: the buffer is as long as we say it is.
        let n = check_size(unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        buf.truncate(n);
        Ok(buf)
    })
}

pub fn fchownat(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
    with_cstr(name, |c| {
        fchownat_c(dir, c, uid, gid, libc::AT_SYMLINK_NOFOLLOW)
    })
}

/// `fchownat`; `u32::MAX` leaves that id unchanged, as with chown(2).
pub fn fchownat_c(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32, flags: i32) -> Result<()> {
    // SAFETY: valid fd, NUL-terminated name.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// chown of the object a descriptor (even `O_PATH`) refers to.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    fchownat_c(fd, EMPTY, uid, gid, libc::AT_EMPTY_PATH)
}

/// chmod of `name` in `dir` without following a symlink (fchmodat2).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<()> {
    with_cstr(name, |c| {
        // SAFETY: valid fd, NUL-terminated name.
        let r = check_long(unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                mode as libc::c_uint,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        });
        match r {
            Ok(_) => Ok(()),
            // Before Linux 6.6: fchmodat without the flag. Callers only
            // chmod objects that are not symlinks, which it cannot follow.
            Err(e) if e == Errno::ENOSYS => {
                // SAFETY: as above.
                check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode, 0) }).map(drop)
            }
            Err(e) => Err(e),
        }
    })
}

/// `/proc/self/fd/N`: a name that leads to the very inode `fd` refers to,
/// for calls that follow it to that inode without opening it (opening a
/// FIFO would wait for a partner, opening a device would reach a driver).
fn proc_fd(fd: BorrowedFd<'_>) -> std::ffi::CString {
    // Digits only: cannot contain NUL.
    std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Sets an open descriptor's status flags (`O_NONBLOCK`, `O_APPEND`, ...).
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) -> Result<()> {
    // SAFETY: valid fd; F_SETFL takes an int.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// chmod of an open (not `O_PATH`) descriptor.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// chown of an open (not `O_PATH`) descriptor.
pub fn fchown_open(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// chmod of the inode an `O_PATH` descriptor refers to.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> Result<()> {
    let p = proc_fd(fd);
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::fchmodat(libc::AT_FDCWD, p.as_ptr(), mode, 0) }).map(drop)
}

/// Sets the times of the inode an `O_PATH` descriptor refers to.
pub fn utimens_fd(fd: BorrowedFd<'_>, atime: SetTime, mtime: SetTime) -> Result<()> {
    let p = proc_fd(fd);
    utimensat_c(fd, &p, atime, mtime, 0)
}

/// truncate(2) of the inode an `O_PATH` descriptor refers to.
pub fn truncate_fd(fd: BorrowedFd<'_>, len: u64) -> Result<()> {
    let len = i64::try_from(len).map_err(|_| Errno::EFBIG)?;
    let p = proc_fd(fd);
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::truncate(p.as_ptr(), len) }).map(drop)
}

/// A time to set with utimensat: a value, "now", or "leave as is".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    Omit,
    Now,
    At { sec: i64, nsec: i64 },
}

impl SetTime {
    fn timespec(self) -> libc::timespec {
        match self {
            SetTime::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            SetTime::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            SetTime::At { sec, nsec } => libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
        }
    }
}

/// utimensat without following a symlink.
pub fn utimensat(dir: BorrowedFd<'_>, name: &OsStr, atime: SetTime, mtime: SetTime) -> Result<()> {
    with_cstr(name, |c| {
        utimensat_c(dir, c, atime, mtime, libc::AT_SYMLINK_NOFOLLOW)
    })
}

fn utimensat_c(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: SetTime,
    mtime: SetTime,
    flags: i32,
) -> Result<()> {
    let times = [atime.timespec(), mtime.timespec()];
    // SAFETY: valid fd, NUL-terminated name, two timespecs.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })
        .map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<()> {
    let len = i64::try_from(len).map_err(|_| Errno::EFBIG)?;
    // SAFETY: valid fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<()> {
    // SAFETY: valid fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> Result<()> {
    let off = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
    let len = i64::try_from(len).map_err(|_| Errno::EFBIG)?;
    // SAFETY: valid fd.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off, len) }).map(drop)
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize> {
    let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the buffer is valid for its length.
    check_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<usize> {
    let off = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
    // SAFETY: the buffer is valid for its length.
    check_size(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) })
}

/// Copies a range in the kernel; returns the bytes copied (0 at EOF).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: usize,
) -> Result<usize> {
    let mut so = i64::try_from(src_off).map_err(|_| Errno::EINVAL)?;
    let mut d = i64::try_from(dst_off).map_err(|_| Errno::EFBIG)?;
    // SAFETY: valid fds and offset pointers that live across the call.
    check_size(unsafe {
        libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut d, len, 0)
    })
}

/// Shares all of `src`'s extents with `dst` (a reflink).
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) }).map(drop)
}

pub const SEEK_SET: i32 = libc::SEEK_SET;
pub const SEEK_DATA: i32 = libc::SEEK_DATA;
pub const SEEK_HOLE: i32 = libc::SEEK_HOLE;

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> Result<i64> {
    // SAFETY: valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 { Err(last_errno()) } else { Ok(r) }
}

pub type StatVfs = libc::statvfs;

pub fn fstatvfs(fd: BorrowedFd<'_>) -> Result<StatVfs> {
    let mut st = std::mem::MaybeUninit::<StatVfs>::uninit();
    // SAFETY: valid fd and out pointer.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by the successful call.
    Ok(unsafe { st.assume_init() })
}

/// One entry of a directory as getdents64 reports it.
pub struct RawDirEntry<'a> {
    pub ino: u64,
    pub dtype: u8,
    pub name: &'a OsStr,
}

/// Reads every entry of the directory `dir` (an `O_PATH` descriptor is
/// fine) and calls `f` for each, `.` and `..` excluded, leaving its access
/// time alone where permitted.
pub fn read_dir(dir: BorrowedFd<'_>, f: impl FnMut(RawDirEntry<'_>)) -> Result<()> {
    read_dir_atime(dir, false, f)
}

/// [`read_dir`]; `touch_atime`: as any reader would, by the rules of the
/// directory's own mount.
pub fn read_dir_atime(
    dir: BorrowedFd<'_>,
    touch_atime: bool,
    mut f: impl FnMut(RawDirEntry<'_>),
) -> Result<()> {
    let noatime = if touch_atime { 0 } else { libc::O_NOATIME };
    let fd = openat_c(dir, DOT, libc::O_RDONLY | libc::O_DIRECTORY | noatime, 0)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the buffer is valid for its length; getdents64 fills it
        // with whole linux_dirent64 records.
        let n = check_long(unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        })? as usize;
        if n == 0 {
            return Ok(());
        }
        let mut pos = 0;
        while pos + 19 <= n {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
            let rec = &buf[pos..n];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().map_err(|_| Errno::EIO)?);
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().map_err(|_| Errno::EIO)?);
            let reclen = reclen as usize;
            if reclen < 19 || reclen > rec.len() {
                return Err(Errno::EIO);
            }
            let dtype = rec[18];
            let raw = &rec[19..reclen];
            let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = OsStr::from_bytes(&raw[..len]);
            if name != "." && name != ".." {
                f(RawDirEntry { ino, dtype, name });
            }
            pos += reclen;
        }
    }
}

/// Convenience for tests and setup: all names in a directory.
pub fn list_names(dir: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let mut v = Vec::new();
    read_dir(dir, |e| v.push(e.name.to_os_string()))?;
    Ok(v)
}

/// mount(2): `source` on `target` with filesystem type `fstype`, `flags`
/// (`MS_*`) and the filesystem's own option string `data`.
pub fn mount(source: &str, target: &Path, fstype: &str, flags: u64, data: &str) -> Result<()> {
    let cstr = |s: &[u8]| std::ffi::CString::new(s).map_err(|_| Errno::EINVAL);
    let (src, tgt) = (
        cstr(source.as_bytes())?,
        cstr(target.as_os_str().as_bytes())?,
    );
    let (fst, dat) = (cstr(fstype.as_bytes())?, cstr(data.as_bytes())?);
    // SAFETY: NUL-terminated strings that live across the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            flags as libc::c_ulong,
            dat.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// Unmounts a mount point; `lazy` detaches it even while it is busy.
pub fn umount(path: &Path, lazy: bool) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::umount2(c.as_ptr(), flags) }).map(drop)
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Raises the open-file limit as far as allowed: a mount keeps a
/// descriptor per cached directory and layer. Returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    // Root may go beyond the hard limit, up to fs.nr_open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    for want in [nr_open.max(lim.rlim_max), lim.rlim_max] {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        };
        // SAFETY: valid pointer to an initialised struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return want;
        }
    }
    lim.rlim_cur
}

/// The raw number of a descriptor, for log messages.
pub fn raw(fd: &impl AsFd) -> RawFd {
    fd.as_fd().as_raw_fd()
}

/// A symlink target as bytes to an `OsString`.
pub fn os_string(v: Vec<u8>) -> OsString {
    OsString::from_vec(v)
}

/// How [`flock`] locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    Shared,
    Exclusive,
}

/// flock(2): an advisory lock on the open file `fd`, held until every copy
/// of the descriptor is closed; `wait` blocks until it is free, otherwise
/// a held lock fails with EWOULDBLOCK.
pub fn flock(fd: BorrowedFd<'_>, how: Lock, wait: bool) -> Result<()> {
    let mut op = match how {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: valid descriptor; flock has no pointer arguments.
        match check(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
            Err(e) if e == Errno::EINTR => continue,
            r => return r.map(drop),
        }
    }
}

/// Whether `fd` refers to a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: valid descriptor.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}
