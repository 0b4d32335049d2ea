//! Writing markers into the upper layer, in the one format the mount was
//! set up with. The format is found out once, at mount time, from what the
//! upper's filesystem and plyfs's privileges allow ("read all, write one"):
//! char 0/0 whiteouts where mknod may make them (any user may, since Linux
//! 5.8, but not on every filesystem: an overlayfs refuses them), else the
//! kernel's xattr whiteouts where attributes can be set, else OCI `.wh.`
//! files; `trusted.overlay.*` attributes where they can be set, else
//! `user.overlay.*`; without attributes at all, OCI opaque markers and no
//! redirects (directories then move by copying). Ownership the daemon
//! cannot give goes to the override-stat attribute the mount keeps, if it
//! keeps one.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use tracing::debug;

use super::{
    Attr, Nlink, OCI_OPAQUE, OverrideNs, StatOverride, UpperSlot, XattrNs, oci_whiteout_name,
};
use crate::error::{Errno, Result};
use crate::sys::{fs, xattr};
use crate::util;

/// How a mount writes whiteouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Whiteouts {
    /// A char 0/0 device.
    Char,
    /// An empty file with the whiteout attribute, its directory marked as
    /// holding such (the kernel reads them in lower layers, and at lookup
    /// in the upper).
    Xattr,
    /// A `.wh.NAME` file beside the name.
    Oci,
}

/// The marker format of one mount, and the verbs that write it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Writer {
    ns: XattrNs,
    whiteouts: Whiteouts,
    /// Whether `ns` attributes can be set at all.
    xattrs: bool,
    /// Where new objects keep the owner, mode and type the union reports
    /// for them (`None`: on the real object).
    overrides: Option<OverrideNs>,
    /// The filesystem renames leaving a char whiteout in one step
    /// (RENAME_WHITEOUT); ramfs, for one, makes char devices but cannot.
    rename_whiteout: bool,
}

impl Writer {
    /// Finds out what the upper's filesystem and our privileges allow, by
    /// trying it in the work directory `work`.
    pub fn probe(work: BorrowedFd<'_>, userxattr: bool, overrides: Option<OverrideNs>) -> Writer {
        let wh = util::temp_name();
        let char_whiteouts = fs::mknodat(work, &wh, libc::S_IFCHR, 0).is_ok();
        let _ = fs::unlinkat(work, &wh, false);
        let rename_whiteout = char_whiteouts && probe_rename_whiteout(work);

        let d = util::temp_name();
        let mut ns = None;
        if fs::mkdirat(work, &d, 0o700).is_ok() {
            let candidates: &[XattrNs] = if userxattr {
                &[XattrNs::User]
            } else {
                &[XattrNs::Trusted, XattrNs::User]
            };
            for &c in candidates {
                if xattr::set(work, &d, c.name(Attr::Opaque), b"y", 0).is_ok() {
                    ns = Some(c);
                    break;
                }
            }
            let _ = fs::unlinkat(work, &d, true);
        }
        let whiteouts = match (char_whiteouts, ns.is_some()) {
            (true, _) => Whiteouts::Char,
            (false, true) => Whiteouts::Xattr,
            (false, false) => Whiteouts::Oci,
        };
        Writer {
            ns: ns.unwrap_or(Self::default_ns(userxattr)),
            whiteouts,
            xattrs: ns.is_some(),
            overrides,
            rename_whiteout,
        }
    }

    /// The format of a mount that writes nothing.
    pub fn read_only(userxattr: bool) -> Writer {
        Writer {
            ns: Self::default_ns(userxattr),
            whiteouts: Whiteouts::Char,
            xattrs: false,
            overrides: None,
            rename_whiteout: false,
        }
    }

    fn default_ns(userxattr: bool) -> XattrNs {
        if userxattr {
            XattrNs::User
        } else {
            XattrNs::Trusted
        }
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} markers, {} whiteouts, attributes {}{}",
            self.ns.label(),
            match self.whiteouts {
                Whiteouts::Char => "char 0/0",
                Whiteouts::Xattr => "xattr",
                Whiteouts::Oci => "OCI .wh.",
            },
            if self.xattrs {
                "settable"
            } else {
                "unavailable"
            },
            match self.overrides {
                Some(ns) => format!(", ownership in {}", ns.name().display()),
                None => String::new(),
            }
        )
    }

    /// Whether new objects get their owner and mode in an override-stat
    /// attribute (and the real object the daemon's).
    pub fn keeps_overrides(&self) -> bool {
        self.overrides.is_some()
    }

    /// Whether an object of type `kind` is made as an empty regular file
    /// that carries its type in the override: `user.*` attributes cannot
    /// be set on devices, pipes and sockets, and the kernel serves those
    /// through the mount without the real object's help.
    pub fn stands_in(&self, kind: u32) -> bool {
        matches!(
            self.overrides,
            Some(OverrideNs::Containers | OverrideNs::Fuse)
        ) && matches!(
            kind,
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK
        )
    }

    /// Stores the override of `name` in `dir` (`""`: the object `dir`
    /// refers to); returns whether it could. A symlink cannot carry a
    /// `user.*` attribute and keeps its real owner, as in fuse-overlayfs.
    pub fn set_override(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        value: &StatOverride,
    ) -> Result<bool> {
        let Some(ns) = self.overrides else {
            return Ok(false);
        };
        match set(dir, name, ns.name(), &value.format()) {
            Ok(()) => Ok(true),
            Err(e) if e == Errno::EPERM && ns != OverrideNs::Privileged => {
                debug!(?name, "override not stored: {e}");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Directories can carry redirects (else a directory with lower
    /// content can only move by being copied whole).
    pub fn has_redirects(&self) -> bool {
        self.xattrs
    }

    /// Whether upper directories may hold xattr whiteouts written by this
    /// mount (so that their empty files need a look when listed).
    pub fn writes_xwhiteouts(&self) -> bool {
        self.whiteouts == Whiteouts::Xattr
    }

    /// Leaves a whiteout for `name` in upper directory `udir`, replacing
    /// what `slot` says stands there. A char or xattr whiteout is built in
    /// `work` and swapped in with one rename; an OCI whiteout is a file
    /// beside the name, and the entry goes after it.
    pub fn whiteout(
        &self,
        work: BorrowedFd<'_>,
        udir: BorrowedFd<'_>,
        name: &OsStr,
        slot: &UpperSlot,
    ) -> Result<()> {
        let in_upper = matches!(slot, UpperSlot::Dir | UpperSlot::Other);
        match self.whiteouts {
            Whiteouts::Char if !in_upper => {
                if *slot != UpperSlot::Whiteout {
                    fs::mknodat(udir, name, libc::S_IFCHR, 0)?;
                }
                Ok(())
            }
            Whiteouts::Char | Whiteouts::Xattr => {
                if *slot == UpperSlot::Whiteout {
                    return Ok(());
                }
                // The directory is marked before the whiteout appears in
                // it: a crash between the two must not leave an xattr
                // whiteout that listings would show as a file.
                self.mark_xwhiteouts(udir)?;
                let wh = self.build_whiteout(work)?;
                let flags = match slot {
                    UpperSlot::Dir => fs::RENAME_EXCHANGE,
                    UpperSlot::Other => 0,
                    _ => fs::RENAME_NOREPLACE,
                };
                if let Err(e) = fs::renameat2(work, &wh, udir, name, flags) {
                    let _ = fs::unlinkat(work, &wh, false);
                    return Err(e);
                }
                if *slot == UpperSlot::Dir {
                    // The old directory (whiteouts only) is in work now.
                    util::remove_tree(work, &wh)?;
                }
                Ok(())
            }
            Whiteouts::Oci => {
                create_empty(udir, &oci_whiteout_name(name))?;
                if in_upper {
                    util::remove_upper(work, udir, name, *slot == UpperSlot::Dir)?;
                }
                Ok(())
            }
        }
    }

    /// Renames `old` to `new` (over nothing, or over what a plain rename
    /// may replace) and leaves a whiteout at `old`: atomically with
    /// RENAME_WHITEOUT in the kernel's format.
    pub fn rename_leaving_whiteout(
        &self,
        work: BorrowedFd<'_>,
        olddir: BorrowedFd<'_>,
        old: &OsStr,
        newdir: BorrowedFd<'_>,
        new: &OsStr,
    ) -> Result<()> {
        match self.whiteouts {
            Whiteouts::Char if self.rename_whiteout => {
                fs::renameat2(olddir, old, newdir, new, fs::RENAME_WHITEOUT)
            }
            // Two steps where the filesystem has no RENAME_WHITEOUT: a
            // crash between them shows the lower object at the old name
            // again beside the moved one (never loses either).
            Whiteouts::Char => {
                fs::renameat2(olddir, old, newdir, new, 0)?;
                fs::mknodat(olddir, old, libc::S_IFCHR, 0)
            }
            Whiteouts::Xattr => {
                // Marked first, as in `whiteout`.
                self.mark_xwhiteouts(olddir)?;
                let wh = self.build_whiteout(work)?;
                if let Err(e) = fs::renameat2(olddir, old, newdir, new, 0) {
                    let _ = fs::unlinkat(work, &wh, false);
                    return Err(e);
                }
                fs::renameat2(work, &wh, olddir, old, fs::RENAME_NOREPLACE)
            }
            Whiteouts::Oci => {
                fs::renameat2(olddir, old, newdir, new, 0)?;
                create_empty(olddir, &oci_whiteout_name(old))
            }
        }
    }

    /// A whiteout of the mount's kind (char or xattr), in `work`.
    fn build_whiteout(&self, work: BorrowedFd<'_>) -> Result<std::ffi::OsString> {
        let wh = util::temp_name();
        if self.whiteouts == Whiteouts::Char {
            fs::mknodat(work, &wh, libc::S_IFCHR, 0)?;
            return Ok(wh);
        }
        create_empty(work, &wh)?;
        if let Err(e) = set(work, &wh, self.ns.name(Attr::Whiteout), b"y") {
            let _ = fs::unlinkat(work, &wh, false);
            return Err(e);
        }
        Ok(wh)
    }

    /// Marks an upper directory as holding xattr whiteouts, as the kernel
    /// wants to find them in a lower (nothing to do for char whiteouts, or
    /// where it is opaque: then nothing below shows anyway).
    fn mark_xwhiteouts(&self, dir: BorrowedFd<'_>) -> Result<()> {
        if self.whiteouts != Whiteouts::Xattr {
            return Ok(());
        }
        let m = super::Markers::read(dir, OsStr::new("."))?;
        if m.opaque || m.xwhiteouts {
            return Ok(());
        }
        set(dir, OsStr::new("."), self.ns.name(Attr::Opaque), b"x")
    }

    /// Removes an OCI whiteout of `name` in `udir`, which a new object of
    /// that name replaces (whatever format the mount writes: the upper may
    /// come from another tool).
    pub fn clear_whiteout(&self, udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        match fs::unlinkat(udir, &oci_whiteout_name(name), false) {
            Err(e) if e != Errno::ENOENT && e != Errno::ENAMETOOLONG => Err(e),
            _ => Ok(()),
        }
    }

    /// Marks directory `name` in `dir` opaque.
    pub fn set_opaque(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        if self.xattrs {
            return set(dir, name, self.ns.name(Attr::Opaque), b"y");
        }
        let d = fs::openat(
            dir,
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        create_empty(d.as_fd(), OsStr::new(OCI_OPAQUE))
    }

    /// Records where a directory's lower content is (see
    /// [`Writer::has_redirects`]).
    pub fn set_redirect(&self, dir: BorrowedFd<'_>, redirect: &[u8]) -> Result<()> {
        if !self.xattrs {
            return Err(Errno::EXDEV);
        }
        set(dir, OsStr::new("."), self.ns.name(Attr::Redirect), redirect)
    }

    /// Records where a copy came from; returns whether it could. The origin
    /// only keeps inode numbers stable, so a filesystem (or namespace:
    /// `user.*` on symlinks) that refuses it does not fail the copy-up, as
    /// with the kernel.
    /// `fh` is the origin's encoded file handle.
    pub fn set_origin(&self, dir: BorrowedFd<'_>, name: &OsStr, fh: &[u8]) -> Result<bool> {
        if !self.xattrs {
            return Ok(false);
        }
        tolerant(set(dir, name, self.ns.name(Attr::Origin), fh))
    }

    /// Whether a file can be copied up without its data: the mark and the
    /// origin it depends on need settable attributes.
    pub fn has_metacopy(&self) -> bool {
        self.xattrs
    }

    /// Marks a copy (`name` in `dir`) as holding metadata only.
    pub fn set_metacopy(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        if !self.xattrs {
            return Err(Errno::EOPNOTSUPP);
        }
        set(dir, name, self.ns.name(Attr::Metacopy), b"")
    }

    /// The data of a metacopy file is in its upper object now: drop the
    /// marks that sent reads to a lower (in both namespaces: the file may
    /// come from another writer).
    pub fn clear_metacopy(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        for ns in [XattrNs::Trusted, XattrNs::User] {
            for attr in [Attr::Metacopy, Attr::Redirect] {
                match xattr::remove(dir, name, ns.name(attr)) {
                    Err(e)
                        if e != Errno::ENODATA && e != Errno::EPERM && e != Errno::EOPNOTSUPP =>
                    {
                        return Err(e);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Marks an upper directory impure: it holds entries with origins, so
    /// readdir must look them up for their inode numbers (the kernel reads
    /// the same mark). Returns whether the format has the mark at all.
    pub fn mark_impure(&self, dir: BorrowedFd<'_>) -> Result<bool> {
        if !self.xattrs {
            return Ok(false);
        }
        set(dir, OsStr::new("."), self.ns.name(Attr::Impure), b"y")?;
        Ok(true)
    }

    /// Stores the persistent link count of an indexed object (`name` in
    /// `dir`, or `dir` itself with an empty name); returns whether it
    /// could. Where the upper cannot hold it, the count is kept for the
    /// life of the mount only.
    pub fn set_nlink(&self, dir: BorrowedFd<'_>, name: &OsStr, nlink: Nlink) -> Result<bool> {
        if !self.xattrs {
            return Ok(false);
        }
        tolerant(set(dir, name, self.ns.name(Attr::Nlink), &nlink.format()))
    }
}

/// Whether a rename in `work` can leave a char whiteout behind in one step.
fn probe_rename_whiteout(work: BorrowedFd<'_>) -> bool {
    let (a, b) = (util::temp_name(), util::temp_name());
    if create_empty(work, &a).is_err() {
        return false;
    }
    let ok = fs::renameat2(work, &a, work, &b, fs::RENAME_WHITEOUT).is_ok();
    for n in [&a, &b] {
        let _ = fs::unlinkat(work, n, false);
    }
    ok
}

/// Markers are written with our privileges whatever the modes say.
fn set(dir: BorrowedFd<'_>, name: &OsStr, attr: &OsStr, value: &[u8]) -> Result<()> {
    xattr::set(dir, name, attr, value, 0)
}

/// A marker the object may refuse without harm to the union's view.
fn tolerant(r: Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::EPERM || e == Errno::EOPNOTSUPP => {
            debug!("marker not stored: {e}");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn create_empty(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    fs::openat(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW,
        0o600,
    )
    .map(drop)
}
