//! The work directory: `work/` must be empty between mounts, and every
//! entry of `index/` must be a hard link's copy the kernel accepts.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{CheckError, Out, Problem, Result};
use crate::error::Errno;
use crate::inode::origin::OriginFh;
use crate::markers::audit::{self, RawKind};
use crate::markers::{Nlink, NlinkBase, is_whiteout};
use crate::sys::fs;
use crate::util;

pub(super) fn check_work(out: &mut Out<'_>, path: &Path, root: BorrowedFd<'_>) -> Result<()> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |errno| CheckError::Io {
            path: p.clone(),
            errno,
        }
    };
    let work_path = path.join("work");
    match fs::openat(root, OsStr::new("work"), flags, 0) {
        Ok(work) => {
            let mut names = fs::list_names(work.as_fd()).map_err(io(&work_path))?;
            names.sort();
            for name in names {
                out.found(work_path.join(&name), Problem::StrayWork, None, || {
                    util::remove_tree(work.as_fd(), &name)
                });
            }
        }
        Err(e) if e == Errno::ENOENT => {}
        Err(e) => return Err(io(&work_path)(e)),
    }
    let index_path = path.join("index");
    let index = match fs::openat(root, OsStr::new("index"), flags, 0) {
        Ok(fd) => fd,
        Err(e) if e == Errno::ENOENT => return Ok(()),
        Err(e) => return Err(io(&index_path)(e)),
    };
    let mut names = fs::list_names(index.as_fd()).map_err(io(&index_path))?;
    names.sort();
    for name in names {
        let entry = index_path.join(&name);
        let st = match fs::fstatat(index.as_fd(), &name) {
            Ok(st) => st,
            Err(e) if e == Errno::ENOENT => continue,
            Err(e) => return Err(io(&entry)(e)),
        };
        out.report.objects += 1;
        // The kernel leaves whiteouts here for orphans with nfs_export.
        if is_whiteout(&st) {
            continue;
        }
        let Some(fh) = unhex(name.as_bytes()).and_then(|b| OriginFh::decode(&b)) else {
            out.found(entry, Problem::BadIndexName, None, || {
                fs::unlinkat(index.as_fd(), &name, false)
            });
            continue;
        };
        let raw = audit::read_raw(index.as_fd(), &name).map_err(io(&entry))?;
        if let Some(origin) = raw.iter().find(|m| m.kind == RawKind::Origin)
            && OriginFh::decode(&origin.value).is_some_and(|o| o != fh)
        {
            out.found(entry.clone(), Problem::IndexOriginMismatch, None, || Ok(()));
        }
        // Only the index names it, and the count kept relative to its own
        // says the union has no name left: the last unlink was cut short
        // before it removed the entry.
        let count = raw
            .iter()
            .find(|m| m.kind == RawKind::Nlink)
            .and_then(|m| Nlink::parse(&m.value))
            .filter(|n| n.base == NlinkBase::Upper);
        if st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_nlink == 1
            && count.is_some_and(|n| n.union_count(0, 1).is_none_or(|c| c == 0))
        {
            out.found(entry, Problem::OrphanIndex, None, || {
                fs::unlinkat(index.as_fd(), &name, false)
            });
        }
    }
    Ok(())
}

/// Lowercase or uppercase hex to bytes.
fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|c| {
            let d = |b: u8| (b as char).to_digit(16);
            Some((d(c[0])? * 16 + d(c[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unhex() {
        assert_eq!(super::unhex(b"00fb1d"), Some(vec![0, 0xfb, 0x1d]));
        assert_eq!(super::unhex(b"0"), None);
        assert_eq!(super::unhex(b"zz"), None);
    }
}
