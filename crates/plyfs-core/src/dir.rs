//! Changing directories: create, mknod, mkdir, symlink, link, unlink,
//! rmdir and rename, with the whiteouts, opaque directories and redirects
//! that keep the lowers hidden or found, as the kernel writes them.
//!
//! Every new object is built in the work directory and moved into place
//! with one rename, so each change is atomic in the union's view.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use tracing::debug;

use crate::copy_up::set_marker;
use crate::error::{Errno, Result};
use crate::inode::{Ino, Node, ROOT_INO, Real};
use crate::markers::{self, Attr, NlinkBase};
use crate::namei::Found;
use crate::readdir::EntryKind;
use crate::sys::fs;
use crate::{Caller, Entry, Overlay, util};

/// What a rename moved, and what it replaced (or, with RENAME_EXCHANGE,
/// moved the other way).
#[derive(Clone, Copy, Debug)]
pub struct Renamed {
    pub moved: Ino,
    pub replaced: Option<Ino>,
}

/// What occupies a name in an upper directory.
#[derive(Debug, PartialEq, Eq)]
enum UpperSlot {
    Empty,
    /// A char 0/0 whiteout.
    Whiteout,
    Dir,
    Other,
}

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
        let pst = fs::fstat(udir.as_fd())?;
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
        let slot = upper_slot(udir.as_fd(), name)?;
        if matches!(slot, UpperSlot::Dir | UpperSlot::Other) {
            return Err(Errno::EEXIST);
        }
        let oci_wh = markers::oci_whiteout_name(name);
        let over_oci = exists(udir.as_fd(), &oci_wh)?;
        let over_whiteout = slot == UpperSlot::Whiteout || over_oci;

        // Where nothing has to be swapped out or marked first, the object
        // is made right in its upper directory, as the kernel makes it
        // (and where its inode is allocated near its siblings).
        if slot == UpperSlot::Empty && !(kind == libc::S_IFDIR && over_whiteout) {
            self.create_in_place(
                udir.as_fd(),
                name,
                kind,
                perm,
                rdev,
                target,
                caller.uid,
                gid,
            )?;
            if over_oci {
                let _ = fs::unlinkat(udir.as_fd(), &oci_wh, false);
            }
            let entry = self.entry_for_new(&pnode, &udir, name, false)?;
            debug!(parent, ?name, ino = entry.ino, "created");
            return Ok(entry);
        }
        let tmp = util::temp_name();
        let built = (|| -> Result<()> {
            match kind {
                libc::S_IFDIR => fs::mkdirat(work.as_fd(), &tmp, 0o700)?,
                libc::S_IFREG => drop(fs::openat(
                    work.as_fd(),
                    &tmp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )?),
                libc::S_IFLNK => fs::symlinkat(target.ok_or(Errno::EINVAL)?, work.as_fd(), &tmp)?,
                _ => fs::mknodat(work.as_fd(), &tmp, kind | 0o600, rdev)?,
            }
            fs::fchownat(work.as_fd(), &tmp, caller.uid, gid)?;
            if kind != libc::S_IFLNK {
                fs::fchmodat(work.as_fd(), &tmp, perm)?;
            }
            // A directory made where a name was deleted must not show the
            // lower directory that was deleted.
            if kind == libc::S_IFDIR && over_whiteout {
                self.set_opaque(work.as_fd(), &tmp)?;
            }
            self.place(
                work.as_fd(),
                &tmp,
                udir.as_fd(),
                name,
                slot == UpperSlot::Whiteout,
            )
        })();
        if let Err(e) = built {
            let _ = util::remove_tree(work.as_fd(), &tmp);
            return Err(e);
        }
        if over_oci {
            let _ = fs::unlinkat(udir.as_fd(), &oci_wh, false);
        }
        let entry =
            self.entry_for_new(&pnode, &udir, name, kind == libc::S_IFDIR && over_whiteout)?;
        debug!(parent, ?name, ino = entry.ino, "created");
        Ok(entry)
    }

    /// Makes `name` in upper directory `udir` with its owner and mode. A
    /// regular file is built unnamed (O_TMPFILE) and linked in whole; other
    /// objects appear with no permissions until they have their owner.
    #[allow(clippy::too_many_arguments)]
    fn create_in_place(
        &self,
        udir: BorrowedFd<'_>,
        name: &OsStr,
        kind: u32,
        perm: u32,
        rdev: u64,
        target: Option<&OsStr>,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        // Root's objects need no chown, so no chmod after it either.
        let owned = uid == 0 && gid == 0;
        let first_mode = if owned { perm } else { 0 };
        if kind == libc::S_IFREG {
            match fs::openat(
                udir,
                OsStr::new("."),
                libc::O_TMPFILE | libc::O_WRONLY,
                first_mode,
            ) {
                Ok(fd) => {
                    if !owned {
                        fs::fchown_open(fd.as_fd(), uid, gid)?;
                        fs::fchmod(fd.as_fd(), perm)?;
                    }
                    return fs::linkat_fd(fd.as_fd(), udir, name);
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
            _ => fs::mknodat(udir, name, kind | first_mode, rdev)?,
        }
        if owned {
            return Ok(());
        }
        let finish = (|| {
            fs::fchownat(udir, name, uid, gid)?;
            if kind != libc::S_IFLNK {
                fs::fchmodat(udir, name, perm)?;
            }
            Ok(())
        })();
        if finish.is_err() {
            let _ = fs::unlinkat(udir, name, kind == libc::S_IFDIR);
        }
        finish
    }

    /// Moves a finished object from the work directory to its name,
    /// swapping out a whiteout that stood there.
    fn place(
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
                name: Arc::from(name),
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
        };
        let node = self.node_from(found, pnode.ino, name, true);
        pnode.bump_version();
        pnode.set_child(name, &node);
        let attr = self.node_attr(&node)?;
        Ok(Entry {
            ino: node.ino,
            generation: node.generation,
            attr,
        })
    }

    /// Marks a directory in the work directory opaque, in the mount's format.
    fn set_opaque(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        if self.layers.format.xattrs {
            set_marker(dir, name, self.layers.format.ns.name(Attr::Opaque), b"y")
        } else {
            let d = fs::openat(
                dir,
                name,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            drop(fs::openat(
                d.as_fd(),
                OsStr::new(markers::OCI_OPAQUE),
                libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW,
                0o600,
            )?);
            Ok(())
        }
    }

    /// Adds the name `newname` in `newparent` for object `ino`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Entry> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EPERM);
        }
        let pnew = self.creation_target(newparent, newname)?;
        self.copy_up(&pnew)?;
        self.copy_up(&node)?;
        self.nlink_start(&node)?;
        let udir = self.upper_dir_of(&pnew)?;
        let work = self.work_fd()?;
        let slot = upper_slot(udir.as_fd(), newname)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
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
        let oci_wh = markers::oci_whiteout_name(newname);
        if exists(udir.as_fd(), &oci_wh)? {
            let _ = fs::unlinkat(udir.as_fd(), &oci_wh, false);
        }
        let origin = !node.state.read().lowers.is_empty();
        if origin && self.layers.format.xattrs && !pnew.state.read().impure {
            self.mark_impure(&pnew)?;
        }
        pnew.bump_version();
        pnew.set_child(newname, &node);
        let node = self.inodes.recount(&node).ok_or(Errno::ESTALE)?;
        let attr = self.node_attr(&node)?;
        Ok(Entry {
            ino: node.ino,
            generation: node.generation,
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
        let slot = upper_slot(udir.as_fd(), name)?;
        let in_upper = matches!(slot, UpperSlot::Dir | UpperSlot::Other);
        if in_upper && !is_dir {
            self.pin_if_named(node, udir.as_fd(), name)?;
        }
        let format = self.layers.format;
        if whiteout && format.kernel_whiteouts {
            if in_upper {
                let wh = util::temp_name();
                fs::mknodat(work.as_fd(), &wh, libc::S_IFCHR, 0)?;
                let flags = if is_dir { fs::RENAME_EXCHANGE } else { 0 };
                if let Err(e) = fs::renameat2(work.as_fd(), &wh, udir.as_fd(), name, flags) {
                    let _ = fs::unlinkat(work.as_fd(), &wh, false);
                    return Err(e);
                }
                if is_dir {
                    // The old directory (whiteouts only) is in work now.
                    util::remove_tree(work.as_fd(), &wh)?;
                }
            } else if slot != UpperSlot::Whiteout {
                fs::mknodat(udir.as_fd(), name, libc::S_IFCHR, 0)?;
            }
        } else {
            if whiteout {
                drop(fs::openat(
                    udir.as_fd(),
                    &markers::oci_whiteout_name(name),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW,
                    0o600,
                )?);
            }
            if in_upper {
                remove_upper(work.as_fd(), udir.as_fd(), name, is_dir)?;
            }
        }
        self.nlink_end(node)?;
        {
            let mut s = node.state.write();
            if is_dir || !s.indexed {
                s.unlinked = is_dir || self.real_nlink(&s) == 0;
            }
        }
        pnode.bump_version();
        pnode.forget_child(name);
        Ok(())
    }

    /// Renames `name` in `parent` to `newname` in `newparent`, with
    /// RENAME_NOREPLACE and RENAME_EXCHANGE. Directories move too, lower
    /// or merged ones included: a redirect keeps their lower content found.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<Renamed> {
        self.check_writable()?;
        util::check_name(name)?;
        util::check_name(newname)?;
        if flags & !(fs::RENAME_NOREPLACE | fs::RENAME_EXCHANGE) != 0
            || flags == fs::RENAME_NOREPLACE | fs::RENAME_EXCHANGE
        {
            return Err(Errno::EINVAL);
        }
        if markers::is_reserved_name(newname) {
            return Err(Errno::EINVAL);
        }
        let exchange = flags & fs::RENAME_EXCHANGE != 0;
        let pold = self.node(parent)?;
        let pnew = self.node(newparent)?;
        let old = self.find_node(&pold, name, false)?;
        let new = match self.find_node(&pnew, newname, false) {
            Ok(n) => Some(n),
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        match &new {
            None if exchange => return Err(Errno::ENOENT),
            Some(_) if flags & fs::RENAME_NOREPLACE != 0 => return Err(Errno::EEXIST),
            // Two names of one object: POSIX says do nothing.
            Some(n) if n.ino == old.ino => {
                return Ok(Renamed {
                    moved: old.ino,
                    replaced: None,
                });
            }
            Some(n) if !exchange => {
                if old.is_dir() && !n.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                if !old.is_dir() && n.is_dir() {
                    return Err(Errno::EISDIR);
                }
                if n.is_dir() && !self.is_empty_dir(n)? {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            _ => {}
        }

        self.copy_up(&pold)?;
        self.copy_up(&pnew)?;
        self.alias_up(&old, &pold, name)?;
        if let Some(n) = &new {
            if exchange {
                self.alias_up(n, &pnew, newname)?;
            } else if self.needs_index(n) {
                self.alias_up(n, &pnew, newname)?;
                self.nlink_start(n)?;
            }
        }
        let old_lower = self.lower_positive(&pold, name)?;
        let samedir = parent == newparent;
        if old.is_dir() {
            self.prepare_dir_move(&old, samedir, &pnew)?;
        }
        if exchange
            && let Some(n) = &new
            && n.is_dir()
        {
            self.prepare_dir_move(n, samedir, &pold)?;
        }

        let old_udir = self.upper_dir_of(&pold)?;
        let new_udir = self.upper_dir_of(&pnew)?;
        let work = self.work_fd()?;
        let format = self.layers.format;
        let slot = upper_slot(new_udir.as_fd(), newname)?;
        let mut rflags = 0;
        let mut drop_whiteout_at_old = false;
        let mut oci_whiteout_at_old = false;
        if exchange {
            rflags = fs::RENAME_EXCHANGE;
        } else {
            // An upper directory at the target is empty in the union but
            // may hold whiteouts: make it really empty first.
            if slot == UpperSlot::Dir {
                self.clear_empty_dir(work.as_fd(), new_udir.as_fd(), newname)?;
            }
            match slot {
                UpperSlot::Whiteout if old_lower => rflags = fs::RENAME_EXCHANGE,
                UpperSlot::Whiteout if old.is_dir() => {
                    rflags = fs::RENAME_EXCHANGE;
                    drop_whiteout_at_old = true;
                }
                _ if old_lower && format.kernel_whiteouts => rflags = fs::RENAME_WHITEOUT,
                _ => oci_whiteout_at_old = old_lower,
            }
            if let Some(n) = &new
                && !n.is_dir()
                && slot == UpperSlot::Other
            {
                self.pin_if_named(n, new_udir.as_fd(), newname)?;
            }
        }
        fs::renameat2(old_udir.as_fd(), name, new_udir.as_fd(), newname, rflags)?;
        if drop_whiteout_at_old {
            let _ = fs::unlinkat(old_udir.as_fd(), name, false);
        }
        if oci_whiteout_at_old {
            drop(fs::openat(
                old_udir.as_fd(),
                &markers::oci_whiteout_name(name),
                libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW,
                0o600,
            )?);
        }
        let oci_new = markers::oci_whiteout_name(newname);
        if !exchange && exists(new_udir.as_fd(), &oci_new)? {
            let _ = fs::unlinkat(new_udir.as_fd(), &oci_new, false);
        }

        // Entries that carry an origin or a redirect make their new
        // directory impure (readdir must look their numbers up).
        if self.layers.format.xattrs {
            if self.carries_origin(&old) && !pnew.state.read().impure {
                self.mark_impure(&pnew)?;
            }
            if exchange
                && let Some(n) = &new
                && self.carries_origin(n)
                && !pold.state.read().impure
            {
                self.mark_impure(&pold)?;
            }
        }

        self.moved(
            &old,
            (old_udir.as_fd(), name),
            newparent,
            &new_udir,
            newname,
        );
        if let Some(n) = &new {
            if exchange {
                self.moved(n, (new_udir.as_fd(), newname), parent, &old_udir, name);
            } else {
                self.nlink_end(n)?;
                let mut s = n.state.write();
                s.unlinked = n.is_dir() || (!s.indexed && self.real_nlink(&s) == 0);
            }
        }
        for p in [&pold, &pnew] {
            p.bump_version();
        }
        // The names now lead to the nodes that moved: later lookups find
        // those very nodes, whatever a fresh resolution would make of them.
        pold.forget_child(name);
        pnew.set_child(newname, &old);
        if exchange && let Some(n) = &new {
            pold.set_child(name, n);
        }
        Ok(Renamed {
            moved: old.ino,
            replaced: new.map(|n| n.ino),
        })
    }

    /// Whether an entry carries an origin or redirect into its directory.
    fn carries_origin(&self, node: &Node) -> bool {
        let s = node.state.read();
        !s.lowers.is_empty() || s.redirect.is_some()
    }

    /// Updates a node that moved from `old` to `new` (directory, name).
    fn moved(
        &self,
        node: &Node,
        from: (BorrowedFd<'_>, &OsStr),
        parent: Ino,
        udir: &Arc<OwnedFd>,
        name: &OsStr,
    ) {
        let mut s = node.state.write();
        s.parent = parent;
        s.name = Arc::from(name);
        // A non-directory known by the name that moved follows it; one
        // known by its index entry (a hard link) stays known by that.
        if let Some(Real::At {
            layer: 0,
            dir,
            name: n,
        }) = &mut s.upper
            && **n == *from.1
            && same_dir(dir.as_fd(), from.0).unwrap_or(false)
        {
            *dir = udir.clone();
            *n = Arc::from(name);
        }
    }

    /// A directory about to move keeps finding its lower content: with a
    /// redirect to where that content is, or, for a directory with none,
    /// by becoming opaque where a lower might have the new name.
    fn prepare_dir_move(&self, dir: &Arc<Node>, samedir: bool, new_parent: &Node) -> Result<()> {
        let s = dir.state.read().clone();
        let udir = s.upper_dir().ok_or(Errno::EIO)?.clone();
        if !s.lowers.is_empty() {
            if let Some(r) = &s.redirect
                && (samedir || r.first() == Some(&b'/'))
            {
                return Ok(());
            }
            if !self.layers.format.xattrs {
                return self.move_by_copy(dir);
            }
            let redirect = if samedir {
                s.name.as_bytes().to_vec()
            } else {
                self.absolute_path(dir)?
            };
            set_marker(
                udir.as_fd(),
                OsStr::new("."),
                self.layers.format.ns.name(Attr::Redirect),
                &redirect,
            )?;
            dir.state.write().redirect = Some(redirect);
        } else if !s.opaque && !new_parent.state.read().lowers.is_empty() {
            self.set_opaque(udir.as_fd(), OsStr::new("."))?;
            dir.state.write().opaque = true;
        }
        Ok(())
    }

    /// Where a directory's lower content is, from the layer roots: its
    /// path, with the redirects of its ancestors applied.
    fn absolute_path(&self, node: &Arc<Node>) -> Result<Vec<u8>> {
        let mut comps: Vec<Vec<u8>> = Vec::new();
        let mut cur = node.clone();
        let mut absolute = false;
        for _ in 0..libc::PATH_MAX {
            if cur.ino == ROOT_INO {
                absolute = true;
                break;
            }
            let s = cur.state.read().clone();
            match &s.redirect {
                Some(r) if r.first() == Some(&b'/') => {
                    comps.push(r[1..].to_vec());
                    absolute = true;
                    break;
                }
                Some(r) => comps.push(r.clone()),
                None => comps.push(s.name.as_bytes().to_vec()),
            }
            cur = self.node(s.parent)?;
        }
        if !absolute {
            return Err(Errno::ELOOP);
        }
        let mut out = Vec::new();
        for c in comps.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(c);
        }
        if out.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(out)
    }

    /// Without xattrs there are no redirects: a directory with lower
    /// content moves by copying all of it up and becoming opaque.
    fn move_by_copy(&self, dir: &Arc<Node>) -> Result<()> {
        let entries = self.read_dir_node(dir)?;
        for e in entries.iter().filter(|e| e.name != "." && e.name != "..") {
            let child = self.find_node(dir, &e.name, false)?;
            self.copy_up(&child)?;
            if child.is_dir() {
                self.move_by_copy(&child)?;
            }
        }
        let udir = dir.state.read().upper_dir().ok_or(Errno::EIO)?.clone();
        self.set_opaque(udir.as_fd(), OsStr::new("."))?;
        let mut s = dir.state.write();
        s.opaque = true;
        s.lowers = Arc::from(Vec::new());
        Ok(())
    }

    /// Replaces an upper directory that is empty in the union's view (it
    /// holds whiteouts only) with an empty one, so a rename can replace it.
    fn clear_empty_dir(
        &self,
        work: BorrowedFd<'_>,
        udir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<()> {
        let tmp = util::temp_name();
        fs::mkdirat(work, &tmp, 0o700)?;
        if let Err(e) = fs::renameat2(work, &tmp, udir, name, fs::RENAME_EXCHANGE) {
            let _ = fs::unlinkat(work, &tmp, true);
            return Err(e);
        }
        util::remove_tree(work, &tmp)
    }

    /// Whether a lower layer provides `name` below `dir` (so removing or
    /// moving it away needs a whiteout).
    fn lower_positive(&self, dir: &Node, name: &OsStr) -> Result<bool> {
        let s = dir.state.read().clone();
        if s.lowers.is_empty() || s.opaque {
            return Ok(false);
        }
        let listing = self.listing(dir, &s)?;
        Ok(listing
            .first_hit(name, 0)
            .is_some_and(|h| h.kind != EntryKind::Whiteout))
    }

    /// Gives this particular name of `node` an upper entry: a copy-up, or
    /// for a hard link, a link to its copy in the index.
    fn alias_up(&self, node: &Arc<Node>, pnode: &Arc<Node>, name: &OsStr) -> Result<()> {
        self.copy_up(pnode)?;
        if node.state.read().upper.is_none() {
            match self.index_name_of(node)? {
                Some(iname) => self.copy_up_index(node, &iname)?,
                None => return self.copy_up_at(node, pnode, name),
            }
        }
        if node.is_dir() || !node.state.read().indexed {
            return Ok(());
        }
        let udir = self.upper_dir_of(pnode)?;
        if exists(udir.as_fd(), name)? {
            return Ok(());
        }
        let iname = self.index_name(node)?.ok_or(Errno::EIO)?;
        let index = self.layers.work.as_ref().ok_or(Errno::EROFS)?.index.clone();
        // One more upper name, no more union names: the count kept
        // relative to the upper inode moves by one.
        let union = self.union_nlink(node)?;
        fs::linkat(index.as_fd(), &iname, udir.as_fd(), name)?;
        self.persist_nlink(node, union)?;
        if self.layers.format.xattrs && !pnode.state.read().impure {
            self.mark_impure(pnode)?;
        }
        Ok(())
    }

    /// The index entry name of an indexed node.
    fn index_name(&self, node: &Node) -> Result<Option<OsString>> {
        let lower = node.state.read().lowers.first().cloned();
        match lower {
            Some(l) => Ok(self
                .origin_fh(&l)?
                .map(|fh| OsString::from(fh.index_name()))),
            None => Ok(None),
        }
    }

    /// Lower hard links whose count the union must track in the index.
    pub(crate) fn needs_index(&self, node: &Node) -> bool {
        if node.is_dir() || self.layers.work.is_none() {
            return false;
        }
        let s = node.state.read();
        s.lower_stat.is_some_and(|st| st.st_nlink > 1) && (s.upper.is_none() || s.indexed)
    }

    /// Before a link count change of an indexed object: store the union's
    /// count relative to the upper inode's, which the change moves alike.
    fn nlink_start(&self, node: &Node) -> Result<()> {
        if !node.state.read().indexed {
            return Ok(());
        }
        let union = self.union_nlink(node)?;
        self.persist_nlink(node, union)
    }

    /// Stores the union link count `union` relative to the upper inode's
    /// current count, on the upper inode (the kernel's "U+n" form).
    fn persist_nlink(&self, node: &Node, union: i64) -> Result<()> {
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        let diff = union - upper.stat()?.st_nlink as i64;
        let value = markers::format_nlink(NlinkBase::Upper, diff);
        let attr = self.layers.format.ns.name(Attr::Nlink);
        let stored = match upper.at() {
            Some((dir, name)) => set_marker(dir, name, attr, &value),
            None => {
                let path = format!("/proc/self/fd/{}", fs::raw(&upper_fd(&upper)?));
                xattr::set_deref(path, attr, &value).map_err(Errno::from)
            }
        };
        match stored {
            // Where the upper cannot hold it (user.* on a symlink), the
            // count is kept for the life of the mount only.
            Ok(()) => {}
            Err(e) if e == Errno::EPERM || e == Errno::EOPNOTSUPP => {}
            Err(e) => return Err(e),
        }
        node.state.write().nlink = Some((NlinkBase::Upper, diff));
        Ok(())
    }

    /// After it: an indexed object with no name left drops its index entry.
    fn nlink_end(&self, node: &Node) -> Result<()> {
        if !node.state.read().indexed || self.union_nlink(node)? > 0 {
            return Ok(());
        }
        if let Some(iname) = self.index_name(node)?
            && let Some(w) = &self.layers.work
        {
            let upper = node.state.read().upper.clone();
            if let Some(u) = upper {
                let pinned = u.pin()?;
                node.state.write().upper = Some(pinned);
            }
            let _ = fs::unlinkat(w.index.as_fd(), &iname, false);
            node.state.write().unlinked = true;
        }
        Ok(())
    }

    /// The union link count of an indexed node (0 when all names are gone).
    fn union_nlink(&self, node: &Node) -> Result<i64> {
        let s = node.state.read().clone();
        let (Some(u), Some(ls), Some((base, diff))) = (&s.upper, &s.lower_stat, s.nlink) else {
            return Ok(1);
        };
        let basis = match base {
            NlinkBase::Lower => ls.st_nlink as i64,
            NlinkBase::Upper => u.stat()?.st_nlink as i64,
        };
        Ok(basis + diff)
    }

    /// Link count of the real object behind a node.
    fn real_nlink(&self, s: &crate::inode::NodeState) -> u64 {
        s.real()
            .and_then(|r| r.stat().ok())
            .map_or(0, |st| st.st_nlink)
    }

    /// Keeps `node` reachable if its upper is known only by `name` in
    /// `udir`, which is about to go away.
    fn pin_if_named(&self, node: &Node, udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let upper = node.state.read().upper.clone();
        if let Some(Real::At { dir, name: n, .. }) = &upper
            && **n == *name
            && same_dir(dir.as_fd(), udir)?
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

fn upper_fd(real: &Real) -> Result<BorrowedFd<'_>> {
    match real {
        Real::Pinned { fd, .. } => Ok(fd.as_fd()),
        _ => Err(Errno::EIO),
    }
}

fn upper_slot(udir: BorrowedFd<'_>, name: &OsStr) -> Result<UpperSlot> {
    match fs::fstatat(udir, name) {
        Ok(st) if markers::is_whiteout(&st) => Ok(UpperSlot::Whiteout),
        Ok(st) if util::is_dir(st.st_mode) => Ok(UpperSlot::Dir),
        Ok(_) => Ok(UpperSlot::Other),
        Err(e) if e == Errno::ENOENT => Ok(UpperSlot::Empty),
        Err(e) => Err(e),
    }
}

/// Removes an upper entry that no lower needs hidden.
fn remove_upper(
    work: BorrowedFd<'_>,
    udir: BorrowedFd<'_>,
    name: &OsStr,
    is_dir: bool,
) -> Result<()> {
    match fs::unlinkat(udir, name, is_dir) {
        // A directory empty in the union may still hold whiteouts: move it
        // out of sight in one step, then clear it.
        Err(e) if is_dir && (e == Errno::ENOTEMPTY || e == Errno::EEXIST) => {
            let tmp = util::temp_name();
            fs::renameat2(udir, name, work, &tmp, fs::RENAME_NOREPLACE)?;
            util::remove_tree(work, &tmp)
        }
        r => r,
    }
}

fn exists(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    match fs::fstatat(dir, name) {
        Ok(_) => Ok(true),
        Err(e) if e == Errno::ENOENT || e == Errno::ENAMETOOLONG => Ok(false),
        Err(e) => Err(e),
    }
}

fn same_dir(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> Result<bool> {
    let (x, y) = (fs::fstat(a)?, fs::fstat(b)?);
    Ok(x.st_dev == y.st_dev && x.st_ino == y.st_ino)
}
