//! Changing directories: create, mknod, mkdir, symlink, link, unlink and
//! rmdir, with the whiteouts and opaque directories that keep the lowers
//! hidden, as the kernel writes them (rename has its own module).
//!
//! Each change is atomic in the union's view: an object is made in its
//! upper directory in one step where nothing stands in its way, else built
//! in the work directory and swapped into place with one rename.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tracing::debug;

use crate::acl::NewAcls;
use crate::error::{Errno, Result};
use crate::inode::Name;
use crate::inode::{Found, Ino, Node, NodeState, Real};
use crate::lower_index::EntryKind;
use crate::markers::{self, StatOverride, UpperSlot};
use crate::ownership::NewOwner;
use crate::sys::fs;
use crate::{Caller, Entry, Overlay, util};

impl Overlay {
    pub fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, caller: Caller) -> Result<Entry> {
        self.make(
            parent,
            name,
            libc::S_IFDIR | (mode & 0o7777),
            0,
            None,
            caller,
        )
    }

    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<Entry> {
        let kind = mode & libc::S_IFMT;
        // A 0/0 character device would read back as a whiteout.
        if kind == libc::S_IFCHR && rdev == 0 {
            return Err(Errno::EPERM);
        }
        if !matches!(
            kind,
            libc::S_IFREG | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK
        ) {
            return Err(Errno::EINVAL);
        }
        self.make(parent, name, mode, rdev, None, caller)
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> Result<Entry> {
        if target.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        self.make(parent, name, libc::S_IFLNK | 0o777, 0, Some(target), caller)
    }

    /// Checks a name to be created, and the directory to create it in.
    fn creation_target(&self, parent: Ino, name: &OsStr) -> Result<Arc<Node>> {
        self.check_writable()?;
        util::check_name(name)?;
        if markers::is_reserved_name(name) {
            return Err(Errno::EINVAL);
        }
        let pnode = self.node(parent)?;
        if !pnode.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if pnode.state.read().unlinked {
            return Err(Errno::ENOENT);
        }
        match self.find_node(&pnode, name, false) {
            Ok(_) => Err(Errno::EEXIST),
            Err(e) if e == Errno::ENOENT => Ok(pnode),
            Err(e) => Err(e),
        }
    }

    /// Creates any kind of object as `name` in `parent`, owned by the caller.
    pub(crate) fn make(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        target: Option<&OsStr>,
        caller: Caller,
    ) -> Result<Entry> {
        let pnode = self.creation_target(parent, name)?;
        self.copy_up(&pnode)?;
        let udir = self.upper_dir_of(&pnode)?;
        let work = self.work_fd()?;
        let kind = mode & libc::S_IFMT;
        let pst = self.shown_dir_stat(&pnode, udir.as_fd())?;
        // The kernel's inode_init_owner: set-group-ID directories pass on
        // their group (and, to subdirectories, the bit itself).
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            caller.gid
        };
        let mut perm = mode & 0o7777;
        if kind == libc::S_IFDIR {
            if pst.st_mode & libc::S_ISGID != 0 {
                perm |= libc::S_ISGID;
            }
        } else if perm & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP)
            && gid != caller.gid
            && caller.uid != 0
        {
            perm &= !libc::S_ISGID;
        }
        // The parent's default ACL, or the umask, as the VFS applies them.
        let (perm, acls) = self.creation_acls(udir.as_fd(), kind, perm, caller.umask)?;
        let owner = self.new_owner(kind, perm, rdev, caller.uid, gid);
        let slot = markers::upper_slot(udir.as_fd(), name)?;
        if matches!(slot, UpperSlot::Dir | UpperSlot::Other) {
            return Err(Errno::EEXIST);
        }
        let over_oci = markers::has_oci_whiteout(udir.as_fd(), name)?;
        let over_whiteout = slot == UpperSlot::Whiteout || over_oci;

        // Where nothing has to be swapped out or marked first, the object
        // is made right in its upper directory, as the kernel makes it
        // (and where its inode is allocated near its siblings).
        if slot == UpperSlot::Empty && !(kind == libc::S_IFDIR && over_whiteout) {
            let kept =
                self.create_in_place(udir.as_fd(), name, kind, rdev, target, &owner, &acls)?;
            if over_oci {
                let _ = self.markers().clear_whiteout(udir.as_fd(), name);
            }
            let ovr = owner.ovr.filter(|_| kept);
            let entry = self.entry_for_new(&pnode, &udir, name, false, ovr)?;
            debug!(parent, ?name, ino = entry.ino, "created");
            return Ok(entry);
        }
        let tmp = util::temp_name();
        let built = (|| -> Result<bool> {
            match kind {
                libc::S_IFDIR => fs::mkdirat(work.as_fd(), &tmp, 0o700)?,
                libc::S_IFREG => drop(fs::openat(
                    work.as_fd(),
                    &tmp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )?),
                libc::S_IFLNK => fs::symlinkat(target.ok_or(Errno::EINVAL)?, work.as_fd(), &tmp)?,
                _ => self.make_special(work.as_fd(), &tmp, kind, 0o600, rdev)?,
            }
            let kept = self.apply_owner(work.as_fd(), &tmp, kind, &owner)?;
            self.set_new_acls(work.as_fd(), &tmp, owner.perm, &acls)?;
            // A directory made where a name was deleted must not show the
            // lower directory that was deleted.
            if kind == libc::S_IFDIR && over_whiteout {
                self.markers().set_opaque(work.as_fd(), &tmp)?;
            }
            self.place(
                work.as_fd(),
                &tmp,
                udir.as_fd(),
                name,
                slot == UpperSlot::Whiteout,
            )?;
            Ok(kept)
        })();
        let kept = match built {
            Ok(k) => k,
            Err(e) => {
                let _ = util::remove_tree(work.as_fd(), &tmp);
                return Err(e);
            }
        };
        if over_oci {
            let _ = self.markers().clear_whiteout(udir.as_fd(), name);
        }
        let opaque = kind == libc::S_IFDIR && over_whiteout;
        let ovr = owner.ovr.filter(|_| kept);
        let entry = self.entry_for_new(&pnode, &udir, name, opaque, ovr)?;
        debug!(parent, ?name, ino = entry.ino, "created");
        Ok(entry)
    }

    /// Makes `name` in upper directory `udir` with its owner, mode and
    /// inherited ACLs; returns whether an override was stored. A regular
    /// file is built unnamed (O_TMPFILE) and linked in whole; other objects
    /// that need a chown appear with no permissions until they have their
    /// owner. The upper's filesystem gives the object `udir`'s default ACL
    /// itself, as the kernel's overlayfs relies on it to: `udir` is the
    /// union directory's upper, so that ACL is the union's. Only where the
    /// real mode is not the one shown (an override) is it set again.
    #[allow(clippy::too_many_arguments)]
    fn create_in_place(
        &self,
        udir: BorrowedFd<'_>,
        name: &OsStr,
        kind: u32,
        rdev: u64,
        target: Option<&OsStr>,
        owner: &NewOwner,
        acls: &NewAcls,
    ) -> Result<bool> {
        // Root's objects need no chown, so no chmod after it either.
        let chown = owner.chown.filter(|&ids| ids != (0, 0));
        let first_mode = if chown.is_some() { 0 } else { owner.perm };
        if kind == libc::S_IFREG {
            match fs::openat(
                udir,
                OsStr::new("."),
                libc::O_TMPFILE | libc::O_WRONLY,
                first_mode,
            ) {
                Ok(fd) => {
                    if let Some((uid, gid)) = chown {
                        fs::fchown_open(fd.as_fd(), uid, gid)?;
                        fs::fchmod(fd.as_fd(), owner.perm)?;
                    }
                    let kept = match &owner.ovr {
                        Some(o) => self.markers().set_override(fd.as_fd(), OsStr::new(""), o)?,
                        None => false,
                    };
                    if owner.ovr.is_some() {
                        self.set_new_acls(fd.as_fd(), OsStr::new(""), owner.perm, acls)?;
                    }
                    fs::linkat_fd(fd.as_fd(), udir, name)?;
                    return Ok(kept);
                }
                // Filesystems without O_TMPFILE: create by name below.
                Err(e) if e == Errno::EOPNOTSUPP || e == Errno::EISDIR || e == Errno::EINVAL => {}
                Err(e) => return Err(e),
            }
        }
        match kind {
            libc::S_IFDIR => fs::mkdirat(udir, name, first_mode)?,
            libc::S_IFREG => drop(fs::openat(
                udir,
                name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                first_mode,
            )?),
            libc::S_IFLNK => fs::symlinkat(target.ok_or(Errno::EINVAL)?, udir, name)?,
            _ => self.make_special(udir, name, kind, first_mode, rdev)?,
        }
        let finish = (|| {
            let kept = if chown.is_none() && owner.ovr.is_none() {
                false
            } else {
                self.apply_owner(udir, name, kind, &NewOwner { chown, ..*owner })?
            };
            if owner.ovr.is_some() {
                self.set_new_acls(udir, name, owner.perm, acls)?;
            }
            Ok(kept)
        })();
        if finish.is_err() {
            let _ = fs::unlinkat(udir, name, kind == libc::S_IFDIR);
        }
        finish
    }

    /// Moves a finished object from the work directory to its name,
    /// swapping out a whiteout that stood there.
    pub(crate) fn place(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        udir: BorrowedFd<'_>,
        name: &OsStr,
        over_whiteout: bool,
    ) -> Result<()> {
        if over_whiteout {
            fs::renameat2(work, tmp, udir, name, fs::RENAME_EXCHANGE)?;
            // The whiteout now sits in the work directory.
            let _ = fs::unlinkat(work, tmp, false);
            Ok(())
        } else {
            fs::renameat2(work, tmp, udir, name, fs::RENAME_NOREPLACE)
        }
    }

    /// Makes the node of an object just created in the upper and counts the
    /// kernel's lookup of it.
    fn entry_for_new(
        &self,
        pnode: &Arc<Node>,
        udir: &Arc<OwnedFd>,
        name: &OsStr,
        opaque: bool,
        upper_ovr: Option<StatOverride>,
    ) -> Result<Entry> {
        let st = fs::fstatat(udir.as_fd(), name)?;
        let kind = util::kind(st.st_mode);
        let upper = if kind == libc::S_IFDIR {
            let fd = fs::openat(
                udir.as_fd(),
                name,
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
                name: Name::from(name),
            }
        };
        let found = Found {
            kind,
            upper: Some(upper),
            upper_stat: Some(st),
            lowers: Vec::new(),
            lower_stat: None,
            opaque,
            redirect: None,
            impure: false,
            indexed: false,
            nlink: None,
            upper_ovr,
            lower_ovr: None,
            data: None,
        };
        let node = self.node_from(found, pnode.ino, name, true)?;
        pnode.bump_version();
        pnode.set_child(name, &node);
        let attr = self.node_attr(&node)?;
        Ok(Entry {
            ino: node.ino,
            generation: node.generation(),
            attr,
        })
    }

    /// Adds the name `newname` in `newparent` for object `ino`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Entry> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EPERM);
        }
        let pnew = self.creation_target(newparent, newname)?;
        self.copy_up(&pnew)?;
        self.copy_up_full(&node)?;
        self.nlink_start(&node)?;
        let udir = self.upper_dir_of(&pnew)?;
        let work = self.work_fd()?;
        let slot = markers::upper_slot(udir.as_fd(), newname)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        // Marked before the name appears (see copy_up_at).
        if !node.state.read().lowers.is_empty() {
            self.mark_impure(&pnew)?;
        }
        let link_to = |dir: BorrowedFd<'_>, name: &OsStr| -> Result<()> {
            match &upper {
                Real::Pinned { fd, .. } => fs::linkat_fd(fd.as_fd(), dir, name),
                r => {
                    let (sdir, sname) = r.at().ok_or(Errno::EIO)?;
                    fs::linkat(sdir, sname, dir, name)
                }
            }
        };
        if slot == UpperSlot::Whiteout {
            let tmp = util::temp_name();
            link_to(work.as_fd(), &tmp)?;
            if let Err(e) = self.place(work.as_fd(), &tmp, udir.as_fd(), newname, true) {
                let _ = fs::unlinkat(work.as_fd(), &tmp, false);
                return Err(e);
            }
        } else {
            link_to(udir.as_fd(), newname)?;
        }
        let _ = self.markers().clear_whiteout(udir.as_fd(), newname);
        pnew.bump_version();
        pnew.set_child(newname, &node);
        let node = self.inodes.recount(&node).ok_or(Errno::ESTALE)?;
        let attr = self.node_attr(&node)?;
        Ok(Entry {
            ino: node.ino,
            generation: node.generation(),
            attr,
        })
    }

    /// Removes a non-directory; returns the number of the object it named.
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> Result<Ino> {
        let (pnode, node) = self.removal_target(parent, name)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.remove(&pnode, &node, name).map(|()| node.ino)
    }

    /// Removes an empty directory; returns its number.
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<Ino> {
        let (pnode, node) = self.removal_target(parent, name)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !self.is_empty_dir(&node)? {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove(&pnode, &node, name).map(|()| node.ino)
    }

    fn removal_target(&self, parent: Ino, name: &OsStr) -> Result<(Arc<Node>, Arc<Node>)> {
        self.check_writable()?;
        util::check_name(name)?;
        let pnode = self.node(parent)?;
        let node = self.find_node(&pnode, name, false)?;
        Ok((pnode, node))
    }

    /// Removes `name`, leaving a whiteout where a lower still has it.
    fn remove(&self, pnode: &Arc<Node>, node: &Arc<Node>, name: &OsStr) -> Result<()> {
        let is_dir = node.is_dir();
        self.copy_up(pnode)?;
        if self.needs_index(node) {
            // The union's link count lives on the upper inode: give this
            // name an upper first, so that the count can drop with it.
            self.alias_up(node, pnode, name)?;
            self.nlink_start(node)?;
        }
        let whiteout = self.lower_positive(pnode, name)?;
        let udir = self.upper_dir_of(pnode)?;
        let work = self.work_fd()?;
        let slot = markers::upper_slot(udir.as_fd(), name)?;
        let in_upper = matches!(slot, UpperSlot::Dir | UpperSlot::Other);
        if in_upper && !is_dir {
            self.pin_if_named(node, udir.as_fd(), name)?;
        }
        if whiteout {
            self.markers()
                .whiteout(work.as_fd(), udir.as_fd(), name, &slot)?;
        } else if in_upper {
            util::remove_upper(work.as_fd(), udir.as_fd(), name, is_dir)?;
        }
        self.nlink_end(node)?;
        {
            let mut s = node.state.write();
            if is_dir || !s.indexed {
                s.unlinked = is_dir || self.no_name_left(&s);
            }
        }
        pnode.bump_version();
        pnode.forget_child(name);
        Ok(())
    }

    /// Whether a lower layer provides `name` below `dir` (so removing or
    /// moving it away needs a whiteout).
    pub(crate) fn lower_positive(&self, dir: &Node, name: &OsStr) -> Result<bool> {
        let s = dir.state.read().clone();
        if s.lowers.is_empty() || s.opaque {
            return Ok(false);
        }
        let listing = self.listing(dir, &s)?;
        Ok(listing
            .first_hit(name, 0)
            .is_some_and(|h| h.kind != EntryKind::Whiteout))
    }

    /// Link count of the real object behind a node.
    /// Whether a non-directory that just lost a name has none left in the
    /// union: an upper object when its last link is gone; a lower one,
    /// whose links stay in its layer, unless it is a hard link that
    /// another name may still show.
    pub(crate) fn no_name_left(&self, s: &NodeState) -> bool {
        if s.upper.is_some() {
            self.real_nlink(s) == 0
        } else {
            s.lower_nlink <= 1
        }
    }

    pub(crate) fn real_nlink(&self, s: &NodeState) -> u64 {
        s.real()
            .and_then(|r| r.stat().ok())
            .map_or(0, |st| st.st_nlink)
    }

    /// Keeps `node` reachable if its upper is known only by `name` in
    /// `udir`, which is about to go away.
    pub(crate) fn pin_if_named(
        &self,
        node: &Node,
        udir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<()> {
        let upper = node.state.read().upper.clone();
        if let Some(Real::At { dir, name: n, .. }) = &upper
            && **n == *name
            && util::same_dir(dir.as_fd(), udir)?
            && let Some(u) = &upper
        {
            let pinned = u.pin()?;
            node.state.write().upper = Some(pinned);
        }
        Ok(())
    }

    pub(crate) fn upper_dir_of(&self, node: &Node) -> Result<Arc<OwnedFd>> {
        node.state.read().upper_dir().cloned().ok_or(Errno::EIO)
    }

    pub(crate) fn work_fd(&self) -> Result<Arc<OwnedFd>> {
        Ok(self.layers.work.as_ref().ok_or(Errno::EROFS)?.work.clone())
    }
}
