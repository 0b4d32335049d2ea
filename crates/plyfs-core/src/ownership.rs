//! Owner, mode and type the daemon cannot give a real object (no chown as
//! a plain user, no mknod of devices), kept in the override-stat attribute
//! of an override layer, as fuse-overlayfs's `xattr_permissions=` keeps
//! them. The union reports what the attribute says; the real object
//! belongs to the daemon, with a mode that keeps it usable by the daemon.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use crate::copy_up::{copy_xattrs, set_times};
use crate::error::{Errno, Result};
use crate::inode::{Node, Real};
use crate::layers::LayerIdx;
use crate::markers::{self, StatOverride};
use crate::sys::fs::{self, Stat};
use crate::{Overlay, SetAttr};

/// How a new object gets the owner and mode the caller is to see.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewOwner {
    /// The real object's owner; `None`: it stays the daemon's.
    pub chown: Option<(u32, u32)>,
    /// The real object's permission bits.
    pub perm: u32,
    /// What the override-stat attribute is to say.
    pub ovr: Option<StatOverride>,
}

/// The mode of a real object whose owner and mode live in an override:
/// the one asked for without set-ID bits (the object is the daemon's),
/// and always readable and writable (directories: searchable) by the
/// daemon, which serves it to whoever the override names.
pub(crate) fn kept_mode(kind: u32, perm: u32) -> u32 {
    let floor = if kind == libc::S_IFDIR { 0o700 } else { 0o600 };
    (perm & 0o1777) | floor
}

impl Overlay {
    /// The override a real object carries in its layer (`None` outside
    /// override layers).
    pub(crate) fn read_ovr(&self, real: &Real) -> Result<Option<StatOverride>> {
        let Some(ns) = self.layers.get(real.layer()).overrides else {
            return Ok(None);
        };
        let (dir, name) = real.xattr_target();
        markers::read_override(dir, name, ns)
    }

    /// The `d_type` readdir lists `name` in `dir` of `layer` with: a
    /// regular file in an override layer may stand in for a device, a
    /// pipe or a socket, which `find -type` must see as such.
    pub(crate) fn listed_dtype(
        &self,
        layer: LayerIdx,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        dtype: u8,
    ) -> Result<u8> {
        match self.layers.get(layer).overrides {
            Some(ns) if dtype == libc::DT_REG => {
                Ok(markers::read_override(dir, name, ns)?.map_or(dtype, |o| o.dtype(dtype)))
            }
            _ => Ok(dtype),
        }
    }

    /// How a new object of type `kind`, to be owned by `uid`:`gid` with
    /// `perm`, is made.
    pub(crate) fn new_owner(
        &self,
        kind: u32,
        perm: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> NewOwner {
        if !self.markers().keeps_overrides() {
            return NewOwner {
                chown: Some((uid, gid)),
                perm,
                ovr: None,
            };
        }
        NewOwner {
            chown: None,
            perm: kept_mode(kind, perm),
            ovr: Some(StatOverride {
                uid,
                gid,
                mode: perm & 0o7777,
                kind: Some(kind),
                rdev,
            }),
        }
    }

    /// Gives `name` in `dir` (of real type `kind`) its owner and mode;
    /// returns whether an override was stored.
    pub(crate) fn apply_owner(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: u32,
        owner: &NewOwner,
    ) -> Result<bool> {
        if let Some((uid, gid)) = owner.chown {
            fs::fchownat(dir, name, uid, gid)?;
        }
        if kind != libc::S_IFLNK {
            fs::fchmodat(dir, name, owner.perm)?;
        }
        match &owner.ovr {
            Some(o) => self.markers().set_override(dir, name, o),
            None => Ok(false),
        }
    }

    /// Makes a device, pipe or socket `name` in `dir` with `mode`, or, in a
    /// mount that keeps overrides, the empty regular file that stands in
    /// for one where the real thing cannot be made or cannot carry the
    /// attribute.
    pub(crate) fn make_special(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: u32,
        mode: u32,
        rdev: u64,
    ) -> Result<()> {
        let w = self.markers();
        if !w.stands_in(kind) {
            match fs::mknodat(dir, name, kind | mode, rdev) {
                Err(e) if e == Errno::EPERM && w.keeps_overrides() => {}
                r => return r,
            }
        }
        fs::openat(
            dir,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode & 0o777,
        )
        .map(drop)
    }

    /// Copy-up's metadata in a mount that keeps overrides: the copy
    /// carries what the union showed for the lower (`shown`: its override
    /// applied, else its real owner and mode) in its override, instead of
    /// being chowned.
    pub(crate) fn copy_meta_kept(
        &self,
        src: &Real,
        shown: &Stat,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<Option<StatOverride>> {
        copy_xattrs(src, dir, name)?;
        let value = StatOverride::from_stat(shown);
        let stored = self.markers().set_override(dir, name, &value)?;
        let kind = shown.st_mode & libc::S_IFMT;
        if kind != libc::S_IFLNK {
            fs::fchmodat(dir, name, kept_mode(kind, shown.st_mode))?;
        }
        set_times(dir, name, shown)?;
        Ok(stored.then_some(value))
    }

    /// chown and chmod of a copied-up node in a mount that keeps
    /// overrides: the override changes, the real object does not. Returns
    /// `false` (nothing done) in a mount that does not keep them.
    pub(crate) fn set_kept_owner(&self, node: &Node, upper: &Real, set: &SetAttr) -> Result<bool> {
        if !self.markers().keeps_overrides() {
            return Ok(false);
        }
        if set.mode.is_some() && node.kind() == libc::S_IFLNK {
            return Err(Errno::EOPNOTSUPP);
        }
        let current = node.state.read().upper_ovr();
        let mut next = match current {
            Some(o) => o,
            None => StatOverride::from_stat(&upper.stat()?),
        };
        if let Some(uid) = set.uid {
            next.uid = uid;
        }
        if let Some(gid) = set.gid {
            next.gid = gid;
        }
        if let Some(mode) = set.mode {
            next.mode = mode & 0o7777;
        }
        let (dir, name) = upper.xattr_target();
        // A symlink that cannot carry one keeps its real owner; as in
        // fuse-overlayfs, its lchown is not refused for that.
        if self.markers().set_override(dir, name, &next)? {
            node.state.write().set_upper_ovr(Some(next));
        }
        Ok(true)
    }

    /// The attributes of the directory a new object goes in, as the union
    /// shows them (for the set-group-ID rules).
    pub(crate) fn shown_dir_stat(&self, pnode: &Node, udir: BorrowedFd<'_>) -> Result<Stat> {
        let mut st = fs::fstat(udir.as_fd())?;
        if let Some(o) = pnode.state.read().upper_ovr() {
            o.apply(&mut st);
        }
        Ok(st)
    }
}
