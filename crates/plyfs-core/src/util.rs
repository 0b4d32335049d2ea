//! Small helpers shared by the other concerns.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Errno, Result};
use crate::sys::fs;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(1);

/// A fresh name for a temporary object in the work directory. The prefix
/// is the kernel's; the process id keeps two daemons sharing a workdir by
/// mistake from clobbering each other.
pub fn temp_name() -> OsString {
    let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    OsString::from(format!("#plyfs.{}.{:x}", std::process::id(), n))
}

/// Removes `name` in `dir` and, for a directory, everything below it,
/// without following symlinks and without building paths (trees deeper
/// than PATH_MAX go too). Used on the work directory only.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    match fs::unlinkat(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(e) if e == Errno::ENOENT => return Ok(()),
        Err(e) if e == Errno::EISDIR || e == Errno::EPERM => {}
        Err(e) => return Err(e),
    }
    // A directory: empty it depth-first with an explicit stack of open
    // descriptors, then remove it.
    let top = fs::openat(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    let mut stack = vec![top];
    while let Some(cur) = stack.last() {
        let mut subdirs = Vec::new();
        let mut err = None;
        fs::read_dir(cur.as_fd(), |e| {
            if err.is_some() {
                return;
            }
            let is_dir = e.dtype == libc::DT_DIR
                || (e.dtype == libc::DT_UNKNOWN
                    && fs::fstatat(cur.as_fd(), e.name)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR));
            if !is_dir {
                if let Err(x) = fs::unlinkat(cur.as_fd(), e.name, false)
                    && x != Errno::ENOENT
                {
                    err = Some(x);
                }
            } else {
                match fs::unlinkat(cur.as_fd(), e.name, true) {
                    Ok(()) => {}
                    Err(x) if x == Errno::ENOTEMPTY || x == Errno::EEXIST => {
                        subdirs.push(e.name.to_os_string())
                    }
                    Err(x) if x == Errno::ENOENT => {}
                    Err(x) => err = Some(x),
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        match subdirs.pop() {
            Some(sub) => {
                let fd = fs::openat(
                    cur.as_fd(),
                    &sub,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )?;
                stack.push(fd);
            }
            None => {
                // `cur` is empty now; remove it from its parent on the next
                // pass, which rescans the parent.
                stack.pop();
                if stack.is_empty() {
                    break;
                }
            }
        }
    }
    fs::unlinkat(dir, name, true).or_else(|e| if e == Errno::ENOENT { Ok(()) } else { Err(e) })
}

/// Removes an upper entry that no lower needs hidden. A directory that is
/// empty in the union may still hold whiteouts: it is moved out of sight
/// into `work` in one step, then cleared.
pub fn remove_upper(
    work: BorrowedFd<'_>,
    udir: BorrowedFd<'_>,
    name: &OsStr,
    is_dir: bool,
) -> Result<()> {
    match fs::unlinkat(udir, name, is_dir) {
        Err(e) if is_dir && (e == Errno::ENOTEMPTY || e == Errno::EEXIST) => {
            let tmp = temp_name();
            fs::renameat2(udir, name, work, &tmp, fs::RENAME_NOREPLACE)?;
            remove_tree(work, &tmp)
        }
        r => r,
    }
}

/// Whether `name` exists in `dir` (not following it).
pub fn exists(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    match fs::fstatat(dir, name) {
        Ok(_) => Ok(true),
        Err(e) if e == Errno::ENOENT || e == Errno::ENAMETOOLONG => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether two descriptors refer to the same directory.
pub fn same_dir(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> Result<bool> {
    let (x, y) = (fs::fstat(a)?, fs::fstat(b)?);
    Ok(x.st_dev == y.st_dev && x.st_ino == y.st_ino)
}

/// Whether directory `dir` is `root` or below it, found by walking up
/// through `..` (a directory reached by file handle may be anywhere on
/// its filesystem).
pub fn is_beneath(dir: BorrowedFd<'_>, root: BorrowedFd<'_>) -> Result<bool> {
    let mut cur: Option<std::os::fd::OwnedFd> = None;
    // Deeper than any path can be named: give up, as for no.
    for _ in 0..4096 {
        let at = cur.as_ref().map_or(dir, |c| c.as_fd());
        if same_dir(at, root)? {
            return Ok(true);
        }
        let up = fs::openat(at, OsStr::new(".."), libc::O_PATH | libc::O_DIRECTORY, 0)?;
        if same_dir(up.as_fd(), at)? {
            return Ok(false);
        }
        cur = Some(up);
    }
    Ok(false)
}

/// Takes the exclusive lock a mount holds on its upper and work
/// directories (as the kernel marks them in use); `false` when another
/// holder keeps it. The daemon of a mount just unmounted lets go only as
/// it exits, a moment after umount(8) or `fusermount3 -u` returned, and
/// `umount; mount` (or `; plyfs check`) must work: a held lock is waited
/// for a little first.
pub fn lock_in_use(dir: BorrowedFd<'_>) -> Result<bool> {
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match fs::flock(dir, fs::Lock::Exclusive, false) {
            Ok(()) => return Ok(true),
            Err(e) if e == Errno::EAGAIN && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) if e == Errno::EAGAIN => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// How long a held lock is waited for.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// `d_type` for a mode.
pub fn dtype_of(mode: u32) -> u8 {
    ((mode & libc::S_IFMT) >> 12) as u8
}

/// File type bits of a mode.
pub fn kind(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

pub fn is_dir(mode: u32) -> bool {
    kind(mode) == libc::S_IFDIR
}

/// Checks a single name as it will be created or looked up.
pub fn check_name(name: &OsStr) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.len() > crate::sys::NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if b.is_empty() || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Whether `name` is one directory entry's name, as a directory read
/// gives it: what a name from anywhere but a directory read (a saved
/// listing) must be before a lookup may use it.
pub fn is_component(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= crate::sys::NAME_MAX
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn remove_tree_removes_deep_trees() {
        let t = tempfile::tempdir().unwrap();
        let mut p = t.path().join("top");
        std::fs::create_dir(&p).unwrap();
        for i in 0..50 {
            std::fs::write(p.join(format!("f{i}")), b"x").unwrap();
            p = p.join("d");
            std::fs::create_dir(&p).unwrap();
        }
        std::os::unix::fs::symlink("/etc", p.join("link")).unwrap();
        let dir = fs::open_path(t.path(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        remove_tree(dir.as_fd(), OsStr::new("top")).unwrap();
        assert!(!t.path().join("top").exists());
        assert!(std::path::Path::new("/etc").exists());
    }

    #[test]
    fn names() {
        assert_eq!(
            check_name(OsStr::new(&"a".repeat(256))),
            Err(Errno::ENAMETOOLONG)
        );
        assert!(check_name(OsStr::new(&"a".repeat(255))).is_ok());
    }
}
