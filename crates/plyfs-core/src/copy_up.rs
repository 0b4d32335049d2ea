//! Copy-up: giving an object that lives only in a lower layer a copy in the
//! upper, parents first. The copy is built in the work directory and
//! renamed into place, so a crash never leaves a half-copied object
//! visible. Data moves with a reflink or `copy_file_range`, hole by hole,
//! so sparse files stay sparse and no data crosses into userspace.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tracing::debug;

use crate::Overlay;
use crate::error::{Errno, Result};
use crate::inode::Name;
use crate::inode::{Node, NodeState, ROOT_INO, Real};
use crate::markers::{self, StatOverride};
use crate::sys::fs::{self, SetTime, Stat};
use crate::sys::xattr;
use crate::util;

/// Largest chunk handed to one copy_file_range call.
const COPY_CHUNK: usize = 1 << 30;

impl Overlay {
    /// Makes sure `node` has an upper object, copying it and every
    /// ancestor that lacks one.
    pub(crate) fn copy_up(&self, node: &Arc<Node>) -> Result<()> {
        self.copy_up_with(node, false)
    }

    /// Copy-up for a change of metadata only: without the file's data
    /// where the mount does metacopy.
    pub(crate) fn copy_up_meta(&self, node: &Arc<Node>) -> Result<()> {
        self.copy_up_with(node, self.wants_metacopy(node))
    }

    fn copy_up_with(&self, node: &Arc<Node>, meta: bool) -> Result<()> {
        self.check_writable()?;
        if node.state.read().upper.is_some() {
            return Ok(());
        }
        // A lower hard link needs no name of its own in the upper: its copy
        // lives in the index, where every one of its names finds it. (An
        // operation on the inode does not say which name it came by.)
        if let Some(iname) = self.index_name_of(node)? {
            return self.copy_up_index(node, &iname);
        }
        // Ancestors without an upper, nearest first.
        let mut chain = vec![node.clone()];
        loop {
            // Deeper than any path can be: the parents went round in a circle.
            if chain.len() > libc::PATH_MAX as usize {
                return Err(Errno::ELOOP);
            }
            let parent_ino = chain
                .last()
                .map(|n| n.state.read().parent)
                .unwrap_or(ROOT_INO);
            let parent = self.node(parent_ino)?;
            if parent.state.read().upper.is_some() {
                break;
            }
            if parent.ino == ROOT_INO {
                return Err(Errno::EROFS);
            }
            chain.push(parent);
        }
        for n in chain.iter().rev() {
            let (parent, name) = {
                let s = n.state.read();
                (s.parent, s.name.clone())
            };
            let parent = self.node(parent)?;
            self.copy_up_at(n, &parent, &name, meta && Arc::ptr_eq(n, node))?;
        }
        Ok(())
    }

    /// Copies one object up as `name` in `parent`, whose upper directory
    /// exists already (hard links go to the index: see `copy_up_index`).
    /// `meta`: without its data (metacopy).
    pub(crate) fn copy_up_at(
        &self,
        node: &Arc<Node>,
        parent: &Arc<Node>,
        name: &OsStr,
        meta: bool,
    ) -> Result<()> {
        let _guard = node.op_lock.lock();
        let mut state = node.state.read().clone();
        if state.upper.is_some() {
            return Ok(());
        }
        state.name = Name::from(name);
        let pstate = parent.state.read().clone();
        let udir = pstate.upper_dir().ok_or(Errno::EIO)?.clone();
        let lower = state.lowers.first().ok_or(Errno::EIO)?.clone();
        let lst = lower.stat()?;
        let work = self.layers.work.as_ref().ok_or(Errno::EROFS)?;
        let pst = fs::fstat(udir.as_fd())?;
        // A name deleted since the object was opened (the kernel flushes
        // cached times of an unlinked file, say) must stay deleted. A char
        // whiteout refuses the copy's rename with EEXIST, as in the kernel;
        // an OCI whiteout beside the name refuses it alike.
        if markers::has_oci_whiteout(udir.as_fd(), &state.name)? {
            return Err(Errno::EEXIST);
        }
        debug!(ino = node.ino, name = ?state.name, meta, "copy-up");
        let fh = self.origin_fh(&lower).ok().flatten();
        // The parent is marked before the copy with its origin appears in
        // it (as the kernel does): a crash between the two must not leave
        // a copy whose inode number readers would not look up.
        if fh.is_some() {
            self.mark_impure(parent)?;
        }
        let data = state.data().cloned().unwrap_or_else(|| lower.clone());
        let tmp = util::temp_name();
        let mut upper_ovr = None;
        let placed = self
            .build_copy(
                work.work.as_fd(),
                &tmp,
                &lower,
                (!meta).then_some(&data),
                &lst,
                node.kind(),
                state.lower_ovr(),
            )
            .and_then(|ovr| {
                upper_ovr = ovr;
                if let Some(fh) = &fh {
                    self.markers()
                        .set_origin(work.work.as_fd(), &tmp, &fh.encode())?;
                }
                if meta {
                    self.markers().set_metacopy(work.work.as_fd(), &tmp)?;
                }
                fs::renameat2(
                    work.work.as_fd(),
                    &tmp,
                    udir.as_fd(),
                    &state.name,
                    fs::RENAME_NOREPLACE,
                )
            });
        if let Err(e) = placed {
            let _ = util::remove_tree(work.work.as_fd(), &tmp);
            return Err(e);
        }
        if meta {
            node.state.write().set_data(Some(data));
        }
        self.set_upper(node, parent, &udir, &state, upper_ovr)?;
        restore_times(udir.as_fd(), &pst);
        Ok(())
    }

    /// Records the new upper object in the node.
    fn set_upper(
        &self,
        node: &Node,
        parent: &Node,
        udir: &Arc<OwnedFd>,
        state: &NodeState,
        upper_ovr: Option<StatOverride>,
    ) -> Result<()> {
        let upper = if node.is_dir() {
            let fd = fs::openat(
                udir.as_fd(),
                &state.name,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            Real::Dir {
                layer: 0,
                fd: Arc::new(fd),
                xwhiteouts: false,
            }
        } else {
            Real::At {
                layer: 0,
                dir: udir.clone(),
                name: state.name.clone(),
            }
        };
        {
            let mut s = node.state.write();
            s.upper = Some(upper);
            s.set_upper_ovr(upper_ovr);
        }
        parent.bump_version();
        // A copied directory is merged now (link count 1), a copied file
        // reports its copy's times and blocks: what the kernel cached of
        // this inode is stale.
        self.attr_changed(node.ino);
        Ok(())
    }

    /// Builds the copy of `lower` (real stat `lst`, override `lower_ovr`)
    /// as `tmp` in the work directory, with the owner and mode the union
    /// shows for it, and a regular file's data from `data` (`None`: a
    /// sparse file of the size, for a metacopy); returns the override it
    /// stored, in a mount that keeps them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_copy(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        lower: &Real,
        data: Option<&Real>,
        lst: &Stat,
        kind: u32,
        lower_ovr: Option<StatOverride>,
    ) -> Result<Option<StatOverride>> {
        let mut shown = *lst;
        if let Some(o) = lower_ovr {
            o.apply(&mut shown);
        }
        match kind {
            libc::S_IFDIR => fs::mkdirat(work, tmp, 0o700)?,
            libc::S_IFREG => {
                let dst = fs::openat(
                    work,
                    tmp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )?;
                let size = lst.st_size.max(0) as u64;
                match data {
                    Some(data) => {
                        let src = open_lower(data)?;
                        copy_data(src.as_fd(), dst.as_fd(), size)?;
                        if !self.config.volatile {
                            fs::fsync(dst.as_fd(), false)?;
                        }
                    }
                    None => fs::ftruncate(dst.as_fd(), size)?,
                }
            }
            libc::S_IFLNK => {
                let target = match lower {
                    Real::Pinned { fd, .. } => fs::readlinkat(fd.as_fd(), OsStr::new(""))?,
                    r => {
                        let (d, n) = r.at().ok_or(Errno::EIO)?;
                        fs::readlinkat(d, n)?
                    }
                };
                fs::symlinkat(&fs::os_string(target), work, tmp)?;
            }
            _ => self.make_special(work, tmp, kind, 0o600, lst.st_rdev)?,
        }
        if self.markers().keeps_overrides() {
            return self.copy_meta_kept(lower, &shown, work, tmp);
        }
        copy_meta(lower, &shown, work, tmp).map(|()| None)
    }

    /// Marks an upper directory impure (where the format has the mark): it
    /// holds entries with origins, so readdir must look them up for their
    /// inode numbers, as the kernel's does.
    pub(crate) fn mark_impure(&self, dir: &Node) -> Result<()> {
        let udir = {
            let s = dir.state.read();
            if s.impure {
                return Ok(());
            }
            s.upper_dir().cloned()
        };
        if let Some(udir) = udir
            && self.markers().mark_impure(udir.as_fd())?
        {
            dir.state.write().impure = true;
        }
        Ok(())
    }
}

/// Opens a lower file for reading without touching its access time.
pub(crate) fn open_lower(lower: &Real) -> Result<OwnedFd> {
    match lower.open_file(libc::O_RDONLY | libc::O_NOATIME) {
        Err(e) if e == Errno::EPERM => lower.open_file(libc::O_RDONLY),
        r => r,
    }
}

/// Copies `len` bytes of data: a reflink when the filesystem shares
/// extents, else the data segments only, with copy_file_range, so holes
/// stay holes.
pub(crate) fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> Result<()> {
    if len == 0 || fs::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut off: u64 = 0;
    while off < len {
        let data = match fs::lseek(src, off as i64, fs::SEEK_DATA) {
            Ok(d) => d as u64,
            // No data after `off`: the rest is a hole.
            Err(e) if e == Errno::ENXIO => break,
            Err(e) if e == Errno::EINVAL || e == Errno::EOPNOTSUPP => off,
            Err(e) => return Err(e),
        };
        if data >= len {
            break;
        }
        let hole = match fs::lseek(src, data as i64, fs::SEEK_HOLE) {
            Ok(h) => (h as u64).min(len),
            Err(_) => len,
        };
        let mut pos = data;
        while pos < hole {
            let chunk = ((hole - pos) as usize).min(COPY_CHUNK);
            let n = match fs::copy_file_range(src, pos, dst, pos, chunk) {
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => n,
                Err(e) if e == Errno::EXDEV || e == Errno::EINVAL || e == Errno::EOPNOTSUPP => {
                    copy_by_buffer(src, dst, pos, chunk)?
                }
                Err(e) => return Err(e),
            };
            pos += n as u64;
        }
        off = hole;
    }
    // Trailing holes: the size comes from truncate.
    fs::ftruncate(dst, len)
}

/// Last resort for filesystems without copy_file_range between them.
fn copy_by_buffer(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, pos: u64, len: usize) -> Result<usize> {
    let mut buf = vec![0u8; len.min(1 << 20)];
    let n = fs::pread(src, &mut buf, pos)?;
    if n == 0 {
        return Err(Errno::EIO);
    }
    let mut done = 0;
    while done < n {
        done += fs::pwrite(dst, &buf[done..n], pos + done as u64)?;
    }
    Ok(n)
}

/// Owner, user-visible xattrs, mode and times of `src` onto `name` in
/// `dir`. Owner first: chown drops set-id bits and file capabilities.
pub(crate) fn copy_meta(src: &Real, st: &Stat, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    fs::fchownat(dir, name, st.st_uid, st.st_gid)?;
    copy_xattrs(src, dir, name)?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFLNK {
        fs::fchmodat(dir, name, st.st_mode & 0o7777)?;
    }
    set_times(dir, name, st)
}

/// The times of `st` onto `name` in `dir`.
pub(crate) fn set_times(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> Result<()> {
    fs::utimensat(
        dir,
        name,
        SetTime::At {
            sec: st.st_atime,
            nsec: st.st_atime_nsec,
        },
        SetTime::At {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec,
        },
    )
}

/// Copies every xattr that is not one of the union's own.
pub(crate) fn copy_xattrs(src: &Real, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let Some((sdir, sname)) = src.at() else {
        return Ok(());
    };
    let list = match xattr::list_vec(sdir, sname) {
        Ok(l) => l,
        Err(e) if e == Errno::EOPNOTSUPP => return Ok(()),
        Err(e) => return Err(e),
    };
    for attr in xattr::split_names(&list) {
        use std::os::unix::ffi::OsStrExt;
        if markers::is_internal_xattr(attr.as_bytes()) {
            continue;
        }
        let Some(value) = xattr::get_vec(sdir, sname, attr)? else {
            continue;
        };
        match xattr::set(dir, name, attr, &value, 0) {
            Ok(()) => {}
            // The upper's filesystem may not take every namespace (say,
            // security labels); the kernel skips those as well.
            Err(e) if e == Errno::EOPNOTSUPP => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Puts back a directory's times after changing its entries internally.
pub(crate) fn restore_times(dir: BorrowedFd<'_>, st: &Stat) {
    let _ = fs::utimensat(
        dir,
        OsStr::new("."),
        SetTime::At {
            sec: st.st_atime,
            nsec: st.st_atime_nsec,
        },
        SetTime::At {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec,
        },
    );
}
