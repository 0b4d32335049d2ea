//! The hard-link index, as the kernel's `index=on` keeps it: a lower file
//! with several names is copied up once, into `workdir/index` under a name
//! made of its origin's file handle, and every name of it in the union
//! finds that one copy. Its union link count is persistent
//! (a marker relative to the lower or upper inode's own count), so
//! that it survives remounts and the names the upper does not have yet.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::sync::Arc;

use tracing::debug;

use crate::Overlay;
use crate::error::{Errno, Result};
use crate::inode::Name;
use crate::inode::origin::OriginFh;
use crate::inode::{Found, Node, NodeState, Real};
use crate::markers::{Markers, Nlink, NlinkBase};
use crate::sys::fs::{self, Stat};
use crate::util;

impl Overlay {
    /// The index entry name for a lower hard link (`None` for anything
    /// the index does not hold: directories, single links, filesystems
    /// without file handles, read-only mounts).
    pub(crate) fn index_name_of(&self, node: &Node) -> Result<Option<OsString>> {
        if node.is_dir() || self.layers.work.is_none() {
            return Ok(None);
        }
        let s = node.state.read().clone();
        let Some(lower) = s.lowers.first() else {
            return Ok(None);
        };
        if s.lower_nlink <= 1 || (s.upper.is_some() && !s.indexed) {
            return Ok(None);
        }
        Ok(self
            .origin_fh(lower)?
            .map(|fh| OsString::from(fh.index_name())))
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

    /// Whether the upper object with stat `upper` is the index entry of
    /// the lower object `fh` names (an upper copy of a hard link that was
    /// indexed, found by one of its names).
    pub(crate) fn is_index_entry(&self, fh: &OriginFh, upper: &Stat) -> bool {
        let Some(work) = &self.layers.work else {
            return false;
        };
        fs::fstatat(work.index.as_fd(), OsStr::new(&fh.index_name()))
            .is_ok_and(|ist| ist.st_dev == upper.st_dev && ist.st_ino == upper.st_ino)
    }

    /// Whether the index holds anything (a reader of the upper then has
    /// names to look for).
    pub(crate) fn has_index_entries(&self) -> bool {
        self.layers
            .work
            .as_ref()
            .is_some_and(|w| fs::list_names(w.index.as_fd()).is_ok_and(|n| !n.is_empty()))
    }

    /// Whether `ino` is a hard link whose copy lives in the index.
    pub(crate) fn is_indexed(&self, ino: crate::Ino) -> bool {
        self.node(ino).is_ok_and(|n| n.state.read().indexed)
    }

    /// Lower hard links whose count the union must track in the index.
    pub(crate) fn needs_index(&self, node: &Node) -> bool {
        if node.is_dir() || self.layers.work.is_none() {
            return false;
        }
        let s = node.state.read();
        s.lower_nlink > 1 && (s.upper.is_none() || s.indexed)
    }

    /// A lower hard link found by lookup: if one of its names was copied
    /// up, the copy sits in the index and every name uses it.
    pub(crate) fn attach_index(&self, found: &mut Found) -> Result<()> {
        let Some(work) = &self.layers.work else {
            return Ok(());
        };
        let Some(lower) = found.lowers.first().cloned() else {
            return Ok(());
        };
        let Some(fh) = self.origin_fh(&lower)? else {
            return Ok(());
        };
        let iname = OsString::from(fh.index_name());
        let st = match fs::fstatat(work.index.as_fd(), &iname) {
            Ok(st) => st,
            Err(e) if e == Errno::ENOENT => return Ok(()),
            Err(e) => return Err(e),
        };
        if util::kind(st.st_mode) != found.kind {
            return Ok(());
        }
        let m = Markers::read(work.index.as_fd(), &iname)?;
        let nlink = m.nlink;
        // A stored count that leaves no name is as corrupt as one out of
        // range: the kernel falls back to the real count for both.
        let lower_nlink = found.lower_stat.map_or(0, |s| s.st_nlink);
        found.nlink = nlink.filter(|n| {
            n.union_count(lower_nlink, st.st_nlink)
                .is_some_and(|c| c > 0)
        });
        let upper = Real::At {
            layer: 0,
            dir: work.index.clone(),
            name: Name::from(iname.as_os_str()),
        };
        found.upper_ovr = self.read_ovr(&upper)?;
        found.upper = Some(upper);
        found.upper_stat = Some(st);
        found.indexed = true;
        // A metacopy index entry (the kernel's chown of a hard link) has
        // only the attributes; the data is still the lower's.
        if m.metacopy && found.data.is_none() {
            found.data = Some(lower);
        }
        Ok(())
    }

    /// Copies a lower hard link into the index (or finds it there).
    pub(crate) fn copy_up_index(&self, node: &Arc<Node>, iname: &OsStr) -> Result<()> {
        let _guard = node.op_lock.lock();
        let state = node.state.read().clone();
        if state.upper.is_some() {
            return Ok(());
        }
        let work = self.layers.work.as_ref().ok_or(Errno::EROFS)?;
        let lower = state.lowers.first().ok_or(Errno::EIO)?.clone();
        let lst = lower.stat()?;
        debug!(ino = node.ino, ?iname, "copy-up to the index");
        let upper = Real::At {
            layer: 0,
            dir: work.index.clone(),
            name: Name::from(iname),
        };
        let mut upper_ovr = None;
        if fs::fstatat(work.index.as_fd(), iname).is_err() {
            let fh = self.origin_fh(&lower)?.ok_or(Errno::EIO)?;
            let tmp = util::temp_name();
            let markers = self.markers();
            let built = self
                .build_copy(
                    work.work.as_fd(),
                    &tmp,
                    &lower,
                    Some(state.data().unwrap_or(&lower)),
                    &lst,
                    node.kind(),
                    state.lower_ovr(),
                )
                .and_then(|ovr| {
                    upper_ovr = ovr;
                    if markers.set_origin(work.work.as_fd(), &tmp, &fh.encode())? {
                        // The union's link count, relative to the lower's:
                        // right whatever happens to the upper names.
                        let same_as_lower = Nlink {
                            base: NlinkBase::Lower,
                            diff: 0,
                        };
                        markers.set_nlink(work.work.as_fd(), &tmp, same_as_lower)?;
                    }
                    fs::renameat2(
                        work.work.as_fd(),
                        &tmp,
                        work.index.as_fd(),
                        iname,
                        fs::RENAME_NOREPLACE,
                    )
                });
            if let Err(e) = built {
                let _ = util::remove_tree(work.work.as_fd(), &tmp);
                return Err(e);
            }
        } else {
            upper_ovr = self.read_ovr(&upper)?;
        }
        let nlink = Markers::read(work.index.as_fd(), iname)?.nlink;
        {
            let mut s = node.state.write();
            s.upper = Some(upper);
            s.set_upper_ovr(upper_ovr);
            s.indexed = true;
            s.set_nlink(nlink);
        }
        self.attr_changed(node.ino);
        Ok(())
    }

    /// Gives this particular name of `node` an upper entry: a copy-up, or
    /// for a hard link, a link to its copy in the index.
    pub(crate) fn alias_up(&self, node: &Arc<Node>, pnode: &Arc<Node>, name: &OsStr) -> Result<()> {
        self.copy_up(pnode)?;
        if node.state.read().upper.is_none() {
            match self.index_name_of(node)? {
                Some(iname) => self.copy_up_index(node, &iname)?,
                None => return self.copy_up_at(node, pnode, name, false),
            }
        }
        if node.is_dir() || !node.state.read().indexed {
            return Ok(());
        }
        let udir = self.upper_dir_of(pnode)?;
        if util::exists(udir.as_fd(), name)? {
            return Ok(());
        }
        let iname = self.index_name(node)?.ok_or(Errno::EIO)?;
        let index = self.layers.work.as_ref().ok_or(Errno::EROFS)?.index.clone();
        // One more upper name, no more union names: the count kept
        // relative to the upper inode moves by one.
        let union = self.union_nlink(node)?;
        // Marked first: a crash after the link must not leave a name
        // whose origin (and so its shared inode number) is not read.
        self.mark_impure(pnode)?;
        fs::linkat(index.as_fd(), &iname, udir.as_fd(), name)?;
        self.persist_nlink(node, union)
    }

    /// Before a link count change of an indexed object: store the union's
    /// count relative to the upper inode's, which the change moves alike.
    pub(crate) fn nlink_start(&self, node: &Node) -> Result<()> {
        if !node.state.read().indexed {
            return Ok(());
        }
        let union = self.union_nlink(node)?;
        self.persist_nlink(node, union)
    }

    /// After it: an indexed object with no name left drops its index entry.
    pub(crate) fn nlink_end(&self, node: &Node) -> Result<()> {
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

    /// Stores the union link count `union` relative to the upper inode's
    /// current count, on the upper inode (the kernel's "U+n" form).
    fn persist_nlink(&self, node: &Node, union: u64) -> Result<()> {
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        let nlink =
            Nlink::relative_to_upper(union, upper.stat()?.st_nlink).ok_or(Errno::EOVERFLOW)?;
        let (dir, name) = upper.xattr_target();
        self.markers().set_nlink(dir, name, nlink)?;
        node.state.write().set_nlink(Some(nlink));
        Ok(())
    }

    /// The union link count of an indexed node (0 when all names are gone).
    fn union_nlink(&self, node: &Node) -> Result<u64> {
        let s = node.state.read().clone();
        let (Some(u), true, Some(_)) = (&s.upper, s.lower_nlink > 0, s.nlink()) else {
            return Ok(1);
        };
        let upper = u.stat()?.st_nlink;
        Ok(indexed_nlink(&s, upper).unwrap_or(upper))
    }
}

/// The union link count of an indexed object whose upper inode has
/// `upper` links, from its persistent count; `None` when there is no
/// usable one (then the real count stands, as in the kernel).
pub(crate) fn indexed_nlink(s: &NodeState, upper: u64) -> Option<u64> {
    let (true, Some(n)) = (s.lower_nlink > 0, s.nlink()) else {
        return None;
    };
    n.union_count(u64::from(s.lower_nlink), upper)
}
