//! Unpacking one layer tar into a directory, safely: every name is
//! resolved below the layer root one component at a time through
//! directory descriptors, never following a symlink (`O_NOFOLLOW`), so
//! an entry can neither name a place outside the layer (`..`, `/...`)
//! nor reach one through a symlink an earlier entry made. Owners, modes,
//! times, xattrs, hard links, symlinks and devices are kept; without
//! root, owners and devices go to the override-stat attribute.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use plyfs_core::Errno;
use plyfs_core::layer::{LayerWriter, OciName, Ownership, is_union_xattr, oci_name};
use plyfs_sys::fs::{self as sysfs, SetTime};
use plyfs_sys::xattr;
use tar::EntryType;

use crate::digest::OVER_LIMIT;
use crate::error::{Error, Result};
use crate::store::WhiteoutFormat;

const DIR_FLAGS: i32 = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// How to unpack.
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    /// Keep owners and devices in the override-stat attribute.
    pub rootless: bool,
    pub whiteouts: WhiteoutFormat,
}

/// What an entry says about its object, applied after it is made.
#[derive(Clone, Debug)]
struct Meta {
    own: Ownership,
    mtime: (i64, i64),
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Unpacks the tar stream `tar` into the existing, empty directory `dest`;
/// `blob` names the layer in errors. Returns the bytes of file data.
pub fn unpack(tar: impl Read, dest: &Path, blob: &str, opts: UnpackOptions) -> Result<u64> {
    let root = sysfs::open_path(dest, DIR_FLAGS).map_err(|errno| Error::Sys {
        path: dest.to_path_buf(),
        errno,
    })?;
    let mut u = Unpacker {
        root: Arc::new(root),
        blob,
        opts,
        writer: LayerWriter::new(opts.rootless),
        dirs: HashMap::new(),
        cache: HashMap::new(),
        size: 0,
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(|e| u.stream_error(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| u.stream_error(e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        u.entry(&mut entry, &raw).map_err(|what| match what {
            Failure::Stream(e) => u.stream_error(e),
            Failure::Entry(what) => Error::Entry {
                blob: blob.to_string(),
                entry: shown,
                what,
            },
        })?;
    }
    u.finish_dirs().map_err(|what| Error::Entry {
        blob: blob.to_string(),
        entry: ".".into(),
        what,
    })?;
    Ok(u.size)
}

enum Failure {
    /// The stream itself broke (truncated, corrupt, too long).
    Stream(std::io::Error),
    /// This entry cannot be unpacked.
    Entry(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Entry(s)
    }
}

struct Unpacker<'a> {
    root: Arc<OwnedFd>,
    blob: &'a str,
    opts: UnpackOptions,
    writer: LayerWriter,
    /// Directories and their metadata, applied last (deepest first), as
    /// creating entries in them changes their times. The root is `[]`.
    dirs: HashMap<Vec<OsString>, Meta>,
    /// Directories opened so far, by path.
    cache: HashMap<Vec<OsString>, Arc<OwnedFd>>,
    size: u64,
}

/// The components of an entry's name, refusing anything that could lead
/// outside the layer.
fn components(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path: refused".into());
    }
    let mut v = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path with a \"..\" component: refused".into()),
            _ => v.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(v)
}

fn show(comps: &[OsString]) -> String {
    let v: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    v.join("/")
}

fn errno_text(e: Errno) -> String {
    e.to_string()
}

impl Unpacker<'_> {
    fn stream_error(&self, e: std::io::Error) -> Error {
        let what = if e.to_string().contains(OVER_LIMIT) {
            format!("layer bomb: {OVER_LIMIT}")
        } else {
            format!("truncated or corrupt layer: {e}")
        };
        Error::Blob {
            digest: self.blob.to_string(),
            what,
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<(), Failure> {
        let comps = components(raw)?;
        let kind = entry.header().entry_type();
        let meta = self.meta(entry, kind)?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer root itself ("./").
            if kind == EntryType::Directory {
                self.dirs.insert(Vec::new(), meta);
            }
            return Ok(());
        };
        let parent = self.dir(parents, true)?;
        let p = parent.as_fd();
        let err = |what: &str, e: Errno| format!("{what}: {}", errno_text(e));
        if self.opts.whiteouts == WhiteoutFormat::Kernel {
            match oci_name(name) {
                OciName::Opaque => {
                    return self
                        .writer
                        .set_opaque(p, OsStr::new("."))
                        .map_err(|e| err("cannot mark the directory opaque", e).into());
                }
                OciName::Whiteout(target) => {
                    self.remove_existing(p, parents, target)?;
                    return self
                        .writer
                        .kernel_whiteout(p, target)
                        .map_err(|e| err("cannot make a whiteout", e).into());
                }
                OciName::Plain => {}
            }
        }
        match kind {
            EntryType::Directory => {
                match sysfs::fstatat(p, name) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Ok(_) => {
                        self.remove_existing(p, parents, name)?;
                        sysfs::mkdirat(p, name, 0o700).map_err(|e| err("mkdir", e))?;
                    }
                    Err(e) if e == Errno::ENOENT => {
                        sysfs::mkdirat(p, name, 0o700).map_err(|e| err("mkdir", e))?
                    }
                    Err(e) => return Err(err("stat", e).into()),
                }
                self.dirs.insert(comps.clone(), meta);
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.remove_existing(p, parents, name)?;
                let fd = sysfs::openat(
                    p,
                    name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(|e| err("create", e))?;
                let mut f = std::fs::File::from(fd);
                self.size += std::io::copy(entry, &mut f).map_err(Failure::Stream)?;
                drop(f);
                self.apply(p, name, &meta)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| "symlink without a target".to_string())?
                    .into_owned();
                self.remove_existing(p, parents, name)?;
                sysfs::symlinkat(OsStr::from_bytes(&target), p, name)
                    .map_err(|e| err("symlink", e))?;
                self.apply(p, name, &meta)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| "hard link without a target".to_string())?
                    .into_owned();
                let tcomps = components(&target).map_err(|e| format!("hard link target {e}"))?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err("hard link to the layer root: refused".to_string().into());
                };
                let missing = || {
                    format!(
                        "hard link to {}, which is not in the layer before it: refused",
                        show(&tcomps)
                    )
                };
                let tdir = self.dir(tparents, false).map_err(|_| missing())?;
                if tcomps == comps {
                    return Ok(());
                }
                self.remove_existing(p, parents, name)?;
                sysfs::linkat(tdir.as_fd(), tname, p, name).map_err(|e| {
                    if e == Errno::ENOENT {
                        missing()
                    } else {
                        err("link", e)
                    }
                })?;
                // As docker and containers-storage do: the link entry's
                // owner, mode and times are applied to the shared inode.
                let st = sysfs::fstatat(p, name).map_err(|e| err("stat", e))?;
                let mut meta = meta;
                meta.own.kind = st.st_mode & libc::S_IFMT;
                if matches!(
                    meta.own.kind,
                    libc::S_IFREG | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO
                ) && !(self.opts.rootless && meta.own.kind != libc::S_IFREG)
                {
                    self.apply(p, name, &meta)?;
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.remove_existing(p, parents, name)?;
                if self.opts.rootless {
                    // A stand-in whose type the override attribute gives.
                    sysfs::openat(
                        p,
                        name,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                        0o600,
                    )
                    .map_err(|e| err("create", e))?;
                } else {
                    sysfs::mknodat(p, name, meta.own.kind | 0o600, meta.own.rdev)
                        .map_err(|e| err("mknod", e))?;
                }
                self.apply(p, name, &meta)?;
            }
            // Global PAX headers and the like carry nothing of a file.
            _ => {}
        }
        Ok(())
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
    ) -> Result<Meta, String> {
        let h = entry.header();
        let bad = |what: &str, e: std::io::Error| format!("bad {what} field: {e}");
        let mut uid = h.uid().map_err(|e| bad("uid", e))?;
        let mut gid = h.gid().map_err(|e| bad("gid", e))?;
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let mut mtime = (h.mtime().map_err(|e| bad("mtime", e))? as i64, 0);
        let (maj, min) = (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        let file_kind = match kind {
            EntryType::Directory => libc::S_IFDIR,
            EntryType::Symlink => libc::S_IFLNK,
            EntryType::Char => libc::S_IFCHR,
            EntryType::Block => libc::S_IFBLK,
            EntryType::Fifo => libc::S_IFIFO,
            _ => libc::S_IFREG,
        };
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let num = || std::str::from_utf8(value).ok()?.parse::<u64>().ok();
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((OsString::from(name), value.to_vec()));
                } else if key == "uid" {
                    uid = num().ok_or("bad PAX uid")?;
                } else if key == "gid" {
                    gid = num().ok_or("bad PAX gid")?;
                } else if key == "mtime" {
                    mtime = parse_time(value).ok_or("bad PAX mtime")?;
                }
            }
        }
        let id = |v: u64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} too large"));
        Ok(Meta {
            own: Ownership {
                uid: id(uid, "uid")?,
                gid: id(gid, "gid")?,
                mode,
                kind: file_kind,
                rdev: libc::makedev(maj, min),
            },
            mtime,
            xattrs,
        })
    }

    /// The directory `comps` below the root, opened without following a
    /// symlink anywhere; missing ones are made when `create`.
    fn dir(&mut self, comps: &[OsString], create: bool) -> Result<Arc<OwnedFd>, String> {
        if let Some(fd) = self.cache.get(comps) {
            return Ok(fd.clone());
        }
        let mut cur = self.root.clone();
        for i in 0..comps.len() {
            let key = &comps[..=i];
            if let Some(fd) = self.cache.get(key) {
                cur = fd.clone();
                continue;
            }
            let name = &comps[i];
            let fd = match sysfs::openat(cur.as_fd(), name, DIR_FLAGS, 0) {
                Ok(fd) => fd,
                Err(e) if e == Errno::ENOENT && create => {
                    sysfs::mkdirat(cur.as_fd(), name, 0o700)
                        .map_err(|e| format!("mkdir {}: {e}", show(key)))?;
                    // A directory the archive does not list: root's, 0755.
                    self.dirs.entry(key.to_vec()).or_insert(Meta {
                        own: Ownership {
                            uid: 0,
                            gid: 0,
                            mode: 0o755,
                            kind: libc::S_IFDIR,
                            rdev: 0,
                        },
                        mtime: (0, 0),
                        xattrs: Vec::new(),
                    });
                    sysfs::openat(cur.as_fd(), name, DIR_FLAGS, 0)
                        .map_err(|e| format!("open {}: {e}", show(key)))?
                }
                Err(e) if e == Errno::ENOTDIR || e == Errno::ELOOP => {
                    return Err(format!(
                        "{} is not a directory in the layer (a symlink or a file): refused",
                        show(key)
                    ));
                }
                Err(e) => return Err(format!("open {}: {e}", show(key))),
            };
            let fd = Arc::new(fd);
            self.cache.insert(key.to_vec(), fd.clone());
            cur = fd;
        }
        Ok(cur)
    }

    /// Clears `name` for a new entry: a later entry of a tar replaces an
    /// earlier one of the same name.
    fn remove_existing(
        &mut self,
        dir: BorrowedFd<'_>,
        parents: &[OsString],
        name: &OsStr,
    ) -> Result<(), String> {
        match sysfs::fstatat(dir, name) {
            Err(e) if e == Errno::ENOENT => Ok(()),
            Err(e) => Err(format!("stat: {e}")),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let mut comps = parents.to_vec();
                comps.push(name.to_os_string());
                self.cache.retain(|k, _| !k.starts_with(&comps));
                self.dirs.retain(|k, _| !k.starts_with(&comps));
                let path = format!(
                    "/proc/self/fd/{}/{}",
                    sysfs::raw(&dir),
                    name.to_string_lossy()
                );
                crate::store::remove_any(Path::new(&path));
                Ok(())
            }
            Ok(_) => sysfs::unlinkat(dir, name, false).map_err(|e| format!("unlink: {e}")),
        }
    }

    /// Owner, mode, attributes and times of `name` in `dir`.
    fn apply(&self, dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta) -> Result<(), String> {
        let own = meta.own;
        let symlink = own.kind == libc::S_IFLNK;
        for (n, v) in &meta.xattrs {
            if is_union_xattr(n) {
                continue;
            }
            match xattr::set(dir, name, n, v, 0) {
                Ok(()) => {}
                // What this filesystem or these privileges cannot keep
                // (user.* on a symlink, trusted.* without root).
                Err(e)
                    if e == Errno::EOPNOTSUPP
                        || ((self.opts.rootless || symlink)
                            && (e == Errno::EPERM || e == Errno::EACCES)) =>
                {
                    tracing::debug!(?n, "attribute not kept: {e}");
                }
                Err(e) => return Err(format!("set attribute {}: {e}", n.to_string_lossy())),
            }
        }
        if self.opts.rootless {
            self.writer
                .set_ownership(dir, name, own)
                .map_err(|e| format!("set the override-stat attribute: {e}"))?;
            if !symlink {
                let base = if own.kind == libc::S_IFDIR {
                    0o700
                } else {
                    0o600
                };
                let real = if matches!(own.kind, libc::S_IFDIR | libc::S_IFREG) {
                    (own.mode & 0o777) | base
                } else {
                    0o600
                };
                sysfs::fchmodat(dir, name, real).map_err(|e| format!("chmod: {e}"))?;
            }
        } else {
            sysfs::fchownat(dir, name, own.uid, own.gid).map_err(|e| format!("chown: {e}"))?;
            if !symlink {
                sysfs::fchmodat(dir, name, own.mode & 0o7777).map_err(|e| format!("chmod: {e}"))?;
            }
        }
        let t = SetTime::At {
            sec: meta.mtime.0,
            nsec: meta.mtime.1,
        };
        sysfs::utimensat(dir, name, t, t).map_err(|e| format!("set times: {e}"))
    }

    /// Gives directories their metadata, deepest first, the root last
    /// (in a rootless layer the root's override attribute is what makes
    /// the layer an override layer, so it always gets one).
    fn finish_dirs(&mut self) -> Result<(), String> {
        let mut dirs: Vec<(Vec<OsString>, Meta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        // A layer that does not list its root: as containers-storage shows
        // a container's root.
        let root_meta = Meta {
            own: Ownership {
                uid: 0,
                gid: 0,
                mode: 0o555,
                kind: libc::S_IFDIR,
                rdev: 0,
            },
            mtime: (0, 0),
            xattrs: Vec::new(),
        };
        if !dirs.iter().any(|(k, _)| k.is_empty()) {
            dirs.push((Vec::new(), root_meta));
        }
        for (comps, meta) in dirs {
            match comps.split_last() {
                Some((name, parents)) => {
                    let d = self.dir(parents, false)?;
                    self.apply(d.as_fd(), name, &meta)
                        .map_err(|e| format!("{}: {e}", show(&comps)))?;
                }
                None => {
                    let root = self.root.clone();
                    self.apply(root.as_fd(), OsStr::new("."), &meta)?;
                }
            }
        }
        Ok(())
    }
}

/// A PAX time, `SECONDS[.FRACTION]`.
fn parse_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nsec = 0i64;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        nsec += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    Some((sec, if sec < 0 { -nsec } else { nsec }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(components(b"./a//b/").unwrap(), vec!["a", "b"]);
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert_eq!(parse_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_time(b"7"), Some((7, 0)));
        assert_eq!(parse_time(b"x"), None);
    }
}
