//! Rename, files and directories alike. A directory with lower content
//! keeps finding it after a move through a redirect (relative within its
//! directory, absolute from the layer roots otherwise), as the kernel's
//! `redirect_dir=on` writes it; where the upper cannot hold redirects it is
//! copied up whole instead. A user never gets EXDEV.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::error::{Errno, Result};
use crate::inode::Name;
use crate::inode::{Ino, Lowers, Node, ROOT_INO, Real};
use crate::markers::{self, Redirect, UpperSlot};
use crate::sys::fs;
use crate::{Overlay, util};

/// What a rename moved, and what it replaced (or, with RENAME_EXCHANGE,
/// moved the other way).
#[derive(Clone, Copy, Debug)]
pub struct Renamed {
    pub moved: Ino,
    pub replaced: Option<Ino>,
}

impl Overlay {
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
        // A metacopy file finds its data by its name: it takes the data
        // along instead of a redirect.
        self.copy_up_data(&old)?;
        if let Some(n) = &new {
            if exchange {
                self.alias_up(n, &pnew, newname)?;
                self.copy_up_data(n)?;
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

        // Entries that carry an origin or a redirect make their new
        // directory impure (readdir must look their numbers up); marked
        // before they arrive, so that a crash cannot leave one unmarked.
        if self.carries_origin(&old) {
            self.mark_impure(&pnew)?;
        }
        if exchange
            && let Some(n) = &new
            && self.carries_origin(n)
        {
            self.mark_impure(&pold)?;
        }
        let old_udir = self.upper_dir_of(&pold)?;
        let new_udir = self.upper_dir_of(&pnew)?;
        let work = self.work_fd()?;
        let slot = markers::upper_slot(new_udir.as_fd(), newname)?;
        let (old_dir, new_dir) = (old_udir.as_fd(), new_udir.as_fd());
        if exchange {
            fs::renameat2(old_dir, name, new_dir, newname, fs::RENAME_EXCHANGE)?;
        } else {
            // An upper directory at the target is empty in the union but
            // may hold whiteouts: make it really empty first.
            if slot == UpperSlot::Dir {
                self.clear_empty_dir(work.as_fd(), new_dir, newname)?;
            }
            if let Some(n) = &new
                && !n.is_dir()
                && slot == UpperSlot::Other
            {
                self.pin_if_named(n, new_dir, newname)?;
            }
            match slot {
                // The whiteout at the target moves to where a lower still
                // needs one.
                UpperSlot::Whiteout if old_lower => {
                    fs::renameat2(old_dir, name, new_dir, newname, fs::RENAME_EXCHANGE)?
                }
                // A directory cannot replace a whiteout: swap, then drop it.
                UpperSlot::Whiteout if old.is_dir() => {
                    fs::renameat2(old_dir, name, new_dir, newname, fs::RENAME_EXCHANGE)?;
                    let _ = fs::unlinkat(old_dir, name, false);
                }
                _ if old_lower => self.markers().rename_leaving_whiteout(
                    work.as_fd(),
                    old_dir,
                    name,
                    new_dir,
                    newname,
                )?,
                _ => fs::renameat2(old_dir, name, new_dir, newname, 0)?,
            }
            let _ = self.markers().clear_whiteout(new_dir, newname);
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
                s.unlinked = n.is_dir() || (!s.indexed && self.no_name_left(&s));
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
        !s.lowers.is_empty() || s.redirect().is_some()
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
        s.name = Name::from(name);
        // A non-directory known by the name that moved follows it; one
        // known by its index entry (a hard link) stays known by that.
        if let Some(Real::At {
            layer: 0,
            dir,
            name: n,
        }) = &mut s.upper
            && **n == *from.1
            && util::same_dir(dir.as_fd(), from.0).unwrap_or(false)
        {
            *dir = udir.clone();
            *n = Name::from(name);
        }
    }

    /// A directory about to move keeps finding its lower content: with a
    /// redirect to where that content is, or, for a directory with none,
    /// by becoming opaque where a lower might have the new name.
    fn prepare_dir_move(&self, dir: &Arc<Node>, samedir: bool, new_parent: &Node) -> Result<()> {
        let s = dir.state.read().clone();
        let udir = s.upper_dir().ok_or(Errno::EIO)?.clone();
        if !s.lowers.is_empty() {
            if let Some(r) = s.redirect()
                && (samedir || Redirect::is_absolute(r))
            {
                return Ok(());
            }
            if !self.markers().has_redirects() {
                return self.move_by_copy(dir);
            }
            let redirect = if samedir {
                s.name.as_bytes().to_vec()
            } else {
                self.absolute_path(dir)?
            };
            self.markers().set_redirect(udir.as_fd(), &redirect)?;
            dir.state.write().set_redirect(Some(redirect));
        } else if !s.opaque && !new_parent.state.read().lowers.is_empty() {
            self.markers().set_opaque(udir.as_fd(), OsStr::new("."))?;
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
            match s.redirect() {
                Some(r) if Redirect::is_absolute(r) => {
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
        comps.reverse();
        let out = Redirect::absolute(&comps);
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
        self.markers().set_opaque(udir.as_fd(), OsStr::new("."))?;
        let mut s = dir.state.write();
        s.opaque = true;
        s.lowers = Lowers::None;
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
}
