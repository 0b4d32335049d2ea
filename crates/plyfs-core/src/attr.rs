//! Attributes: what stat reports for a union object, and changing them
//! (which copies the object up first).

use std::os::fd::AsFd;

use crate::error::{Errno, Result};
use crate::file::OpenFile;
use crate::index;
use crate::inode::{Ino, Node, Real};
use crate::sys::fs::{self, SetTime, Stat};
use crate::{Caller, Overlay};

/// The attributes a setattr changes; `None` leaves one as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The kernel leaves killing set-ID bits and capabilities to the
    /// filesystem (FUSE_HANDLE_KILLPRIV_V2): kill them as `caller`'s
    /// write, truncate or chown would.
    pub kill_privs: Option<Caller>,
}

impl SetAttr {
    fn only_times(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.kill_privs.is_none()
    }

    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

impl Overlay {
    pub fn getattr(&self, ino: Ino) -> Result<Stat> {
        let node = self.node(ino)?;
        self.node_attr(&node)
    }

    /// Attributes of a node: the real object's (with what its override
    /// says, in an override layer), with the union's inode number and
    /// link count.
    pub(crate) fn node_attr(&self, node: &Node) -> Result<Stat> {
        let s = node.state.read();
        let mut st = match &s.upper {
            Some(u) => u.stat()?,
            None => s.lowers.first().ok_or(Errno::ESTALE)?.stat()?,
        };
        if let Some(o) = s.shown_ovr() {
            o.apply(&mut st);
        }
        // A metacopy file's blocks are where its data is, as the kernel
        // reports them.
        if let Some(data) = s.data() {
            st.st_blocks = data.stat()?.st_blocks;
        }
        st.st_ino = self.st_ino(node);
        if node.is_dir() {
            if self.config.static_nlink || s.is_merged_dir() {
                // As the kernel: counting subdirectories of every layer is
                // not worth it, and 1 tells find(1) not to rely on it.
                st.st_nlink = 1;
            }
        } else if s.indexed
            && s.upper.is_some()
            // A stored count that leaves no name while the object is
            // still found by one is corrupt: the kernel shows the real
            // count then.
            && let Some(n) = index::indexed_nlink(&s, st.st_nlink).filter(|&n| n > 0)
        {
            st.st_nlink = n;
        }
        Ok(st)
    }

    /// Attributes as seen through an open file (which may be unlinked).
    pub fn getattr_open(&self, file: &OpenFile) -> Result<Stat> {
        let node = self.node(file.ino())?;
        let (unlinked, ovr) = {
            let s = node.state.read();
            (s.unlinked, s.upper_ovr())
        };
        if unlinked {
            let mut st = file.stat()?;
            if let Some(o) = ovr.filter(|_| file.on_upper()) {
                o.apply(&mut st);
            }
            st.st_ino = self.st_ino(&node);
            return Ok(st);
        }
        self.node_attr(&node)
    }

    /// Changes attributes of `ino`, copying it up first. Owner goes before
    /// mode (chown clears set-id bits), times last (truncate sets them).
    pub fn setattr(&self, ino: Ino, set: &SetAttr, file: Option<&OpenFile>) -> Result<Stat> {
        let node = self.node(ino)?;
        if set.is_empty() {
            if let Some(caller) = &set.kill_privs {
                self.kill_privs_of(&node, caller)?;
            }
            return self.touch_ctime(&node);
        }
        self.check_writable()?;
        if set.only_times() && {
            let s = node.state.read();
            s.unlinked && s.upper.is_none()
        } {
            return self.times_of_gone(&node, set);
        }
        if set.size.is_some() && node.is_dir() {
            return Err(Errno::EISDIR);
        }
        if set.size.is_some() {
            self.copy_up_full(&node)?;
        } else {
            self.copy_up_meta(&node)?;
        }
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        // In an override layer the real object stays the daemon's.
        let kept = (set.uid.is_some() || set.gid.is_some() || set.mode.is_some())
            && self.set_kept_owner(&node, &upper, set)?;
        if !kept && (set.uid.is_some() || set.gid.is_some()) {
            let (uid, gid) = (set.uid.unwrap_or(u32::MAX), set.gid.unwrap_or(u32::MAX));
            match upper.at() {
                Some((d, n)) => fs::fchownat(d, n, uid, gid)?,
                None => with_pinned(&upper, |fd| fs::fchown(fd, uid, gid))?,
            }
        }
        if let Some(mode) = set.mode.filter(|_| !kept) {
            if node.kind() == libc::S_IFLNK {
                return Err(Errno::EOPNOTSUPP);
            }
            match upper.at() {
                Some((d, n)) => fs::fchmodat(d, n, mode & 0o7777)?,
                None => with_pinned(&upper, |fd| fs::chmod_fd(fd, mode & 0o7777))?,
            }
        }
        if let Some(size) = set.size {
            match file.filter(|f| f.on_upper() && f.flags() & libc::O_ACCMODE != libc::O_RDONLY) {
                Some(f) => f.with_fd(|fd| fs::ftruncate(fd, size))?,
                None => {
                    if node.kind() != libc::S_IFREG {
                        return Err(Errno::EINVAL);
                    }
                    match upper.at() {
                        Some(_) => fs::ftruncate(upper.open(libc::O_WRONLY)?.as_fd(), size)?,
                        None => with_pinned(&upper, |fd| fs::truncate_fd(fd, size))?,
                    }
                }
            }
        }
        if let Some(caller) = &set.kill_privs
            && set.mode.is_none()
        {
            self.kill_privs_of(&node, caller)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let (a, m) = (
                set.atime.unwrap_or(SetTime::Omit),
                set.mtime.unwrap_or(SetTime::Omit),
            );
            match upper.at() {
                Some((d, n)) => fs::utimensat(d, n, a, m)?,
                None => with_pinned(&upper, |fd| fs::utimens_fd(fd, a, m))?,
            }
        }
        self.node_attr(&node)
    }

    /// New times for a lower object that has left the union. With the
    /// writeback cache the kernel flushes the times of an inode a rename
    /// or unlink just replaced (its change time moved): copying it up would
    /// copy a whole file no name reaches, only to throw it away. Its times
    /// are only seen through descriptors still open, and the kernel keeps
    /// those itself; the reply carries them.
    fn times_of_gone(&self, node: &Node, set: &SetAttr) -> Result<Stat> {
        let mut st = self.node_attr(node)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let resolve = |t: SetTime, old: (i64, i64)| match t {
            SetTime::Omit => old,
            SetTime::Now => (now.as_secs() as i64, i64::from(now.subsec_nanos())),
            SetTime::At { sec, nsec } => (sec, nsec),
        };
        if let Some(a) = set.atime {
            (st.st_atime, st.st_atime_nsec) = resolve(a, (st.st_atime, st.st_atime_nsec));
        }
        if let Some(m) = set.mtime {
            (st.st_mtime, st.st_mtime_nsec) = resolve(m, (st.st_mtime, st.st_mtime_nsec));
        }
        Ok(st)
    }

    /// Kills the set-ID bits and file capabilities a write by `caller`
    /// kills, as the kernel's VFS does: set-user-ID always, set-group-ID
    /// where the group may execute or the caller is not in the file's
    /// group; `security.capability` with them. Nothing for root, which
    /// keeps them (CAP_FSETID).
    pub fn kill_privs(&self, ino: Ino, caller: &Caller) -> Result<()> {
        let node = self.node(ino)?;
        self.kill_privs_of(&node, caller)
    }

    fn kill_privs_of(&self, node: &std::sync::Arc<Node>, caller: &Caller) -> Result<()> {
        if caller.uid == 0 || node.kind() != libc::S_IFREG {
            return Ok(());
        }
        let st = self.node_attr(node)?;
        let mode = st.st_mode & 0o7777;
        let mut kill = mode & libc::S_ISUID;
        if mode & libc::S_ISGID != 0
            && (mode & libc::S_IXGRP != 0 || !crate::process::in_group(caller, st.st_gid))
        {
            kill |= libc::S_ISGID;
        }
        if kill == 0 {
            return Ok(());
        }
        self.copy_up_meta(node)?;
        let set = SetAttr {
            mode: Some(mode & !kill),
            ..SetAttr::default()
        };
        self.setattr(node.ino, &set, None)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        let (dir, name) = upper.xattr_target();
        match crate::sys::xattr::remove(dir, name, std::ffi::OsStr::new("security.capability")) {
            Err(e) if e != Errno::ENODATA && e != Errno::EOPNOTSUPP => Err(e),
            _ => Ok(()),
        }
    }

    /// A setattr that changes nothing (`chown(f, -1, -1)`; the kernel
    /// sends the change time only with the writeback cache) still moves
    /// the change time, as on any filesystem; the kernel's overlayfs
    /// copies the object up for it, as for every setattr. A chown to the
    /// ids it has makes the upper's filesystem set it to now.
    fn touch_ctime(&self, node: &std::sync::Arc<Node>) -> Result<Stat> {
        self.check_writable()?;
        self.copy_up(node)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        match upper.at() {
            Some((d, n)) => fs::fchownat(d, n, u32::MAX, u32::MAX)?,
            None => with_pinned(&upper, |fd| fs::fchown(fd, u32::MAX, u32::MAX))?,
        }
        self.node_attr(node)
    }

    /// access(2) by the mode bits, for mounts where the kernel does not
    /// check permissions itself (no `default_permissions`).
    pub fn access(&self, ino: Ino, mask: i32, caller: Caller) -> Result<()> {
        let st = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        if mask & libc::W_OK != 0 && !self.writable() {
            return Err(Errno::EROFS);
        }
        if caller.uid == 0 {
            // Root may do anything but execute a file nobody may execute.
            let exec_ok = st.st_mode & 0o111 != 0 || st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            return if mask & libc::X_OK != 0 && !exec_ok {
                Err(Errno::EACCES)
            } else {
                Ok(())
            };
        }
        let shift = if st.st_uid == caller.uid {
            6
        } else if st.st_gid == caller.gid {
            3
        } else {
            0
        };
        let granted = ((st.st_mode >> shift) & 7) as i32;
        if mask & granted == mask {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }
}

/// chown/chmod of an unlinked object through its `O_PATH` descriptor.
fn with_pinned(
    real: &Real,
    f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> Result<()>,
) -> Result<()> {
    match real {
        Real::Pinned { fd, .. } => f(fd.as_fd()),
        _ => Err(Errno::EIO),
    }
}
