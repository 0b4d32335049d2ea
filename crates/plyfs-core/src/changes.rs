//! An upper layer read as the change it makes to its lowers, for `commit`
//! and `diff`: new and changed objects, deleted names, opaque directories.
//!
//! The upper is read directly (no mount, no walk of the lowers), which is
//! what makes a commit cheap. Two things in it are not complete on their
//! own: a renamed directory (a redirect) takes its content from a lower
//! directory elsewhere, and a metacopy file takes its data from a lower
//! file. Both are read through the union itself (an [`Overlay`] of the
//! lowers and the upper, read-only), so they resolve exactly as a mount
//! resolves them; the redirected directory comes out opaque and whole.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Errno, SetupError};
use crate::inode::{Ino, ROOT_INO};
use crate::markers::layer::{LayerOverrides, is_metacopy, is_union_xattr, layer_override_ns};
use crate::markers::{Kind, Markers, read_layer_dir};
use crate::sys::fs::{self, Stat};
use crate::sys::xattr;
use crate::{Config, OpenFile, Overlay};

/// How an upper file's content is opened: a FIFO that replaced it since
/// it was listed must not block the reader.
const READ_CONTENT: i32 = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;

/// Why an upper cannot be read as a change.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("{}: {errno}", path.display())]
    Io { path: PathBuf, errno: Errno },
    #[error(
        "{}: {what}, whose content is in the lower layers: name them (--image or --lowerdir)",
        path.display()
    )]
    NeedsLowers { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Setup(#[from] SetupError),
}

type Result<T> = std::result::Result<T, ChangesError>;

/// One entry of the change, in walk order: a directory before what is in
/// it, names in byte order.
#[derive(Debug)]
pub struct Change {
    /// Relative to the layer root, never empty.
    pub path: PathBuf,
    pub what: What,
}

#[derive(Debug)]
pub enum What {
    /// The name is gone from the union (a whiteout in any format).
    Deleted,
    Object(Box<Object>),
}

/// A new or changed object, with the attributes the union reports.
#[derive(Debug)]
pub struct Object {
    /// Owner, mode, type and device as the union reports them (an
    /// override-stat attribute applied); `st_ino`/`st_dev` identify hard
    /// links only together with [`Object::link_key`].
    pub stat: Stat,
    /// A directory that hides everything the lowers have at its path.
    pub opaque: bool,
    /// The object was copied up from a lower (it has an origin).
    pub copied_up: bool,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// The attributes a user sees, by name.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
    /// Names sharing one key are hard links of one file.
    pub link_key: (bool, u64, u64),
    /// Part of it is in the lowers, which were not given (a renamed
    /// directory's content, a metacopy file's data): fine for a listing,
    /// not for a layer.
    pub incomplete: Option<ChangesError>,
    source: Source,
}

#[derive(Debug)]
enum Source {
    None,
    Upper { dir: Arc<OwnedFd>, name: OsString },
    Union(Ino),
}

/// A regular file's data, wherever it lives.
pub enum Content {
    Upper(std::fs::File),
    Union { file: Arc<OpenFile>, offset: u64 },
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Content::Upper(f) => f.read(buf),
            Content::Union { file, offset } => {
                let n = file
                    .read(buf, *offset)
                    .map_err(|e| std::io::Error::from_raw_os_error(e.raw()))?;
                *offset += n as u64;
                Ok(n)
            }
        }
    }
}

/// An upper directory and, where given, the lowers it was made over.
pub struct Changes {
    upper: PathBuf,
    root: Arc<OwnedFd>,
    overrides: Option<LayerOverrides>,
    /// The union of lowers and upper, read-only.
    union: Option<Overlay>,
    /// The lowers alone, for what the upper changes (built on first use).
    lowers: Option<Overlay>,
}

const DIR_FLAGS: i32 = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;

impl Changes {
    /// Opens `upper`, made over `lowers` (top first; may be empty, then
    /// redirects and metacopy files cannot be read), with the work
    /// directory of its mounts where known (its index holds the copies of
    /// hard-linked lower files, which the upper may not name).
    pub fn open(upper: &Path, lowers: &[PathBuf], work: Option<&Path>) -> Result<Changes> {
        let io = |errno| ChangesError::Io {
            path: upper.to_path_buf(),
            errno,
        };
        let root = fs::open_path(upper, DIR_FLAGS & !libc::O_NOFOLLOW).map_err(io)?;
        let overrides = layer_override_ns(root.as_fd()).map_err(io)?;
        let (union, lowers) = if lowers.is_empty() {
            (None, None)
        } else {
            let union = Overlay::new(Config {
                lowers: lowers.to_vec(),
                upper: Some(upper.to_path_buf()),
                work: work.map(Path::to_path_buf),
                read_only: true,
                ..Config::default()
            })?;
            let alone = Overlay::new(Config {
                lowers: lowers.to_vec(),
                read_only: true,
                ..Config::default()
            })?;
            (Some(union), Some(alone))
        };
        Ok(Changes {
            upper: upper.to_path_buf(),
            root: Arc::new(root),
            overrides,
            union,
            lowers,
        })
    }

    /// The upper directory.
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    /// Calls `f` with every change, in walk order.
    pub fn walk<E: From<ChangesError>>(
        &self,
        f: &mut dyn FnMut(Change) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut seen = std::collections::HashSet::new();
        self.walk_upper(&self.root, Path::new(""), false, &mut |c: Change| {
            seen.insert(c.path.clone());
            f(c)
        })?;
        self.walk_index(&seen, f)
    }

    /// Names of hard-linked lower files whose copy is in the index but
    /// that the upper does not name (a write or chmod reaches the copy
    /// without saying by which name): each is changed content.
    fn walk_index<E: From<ChangesError>>(
        &self,
        seen: &std::collections::HashSet<PathBuf>,
        f: &mut dyn FnMut(Change) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let (Some(union), Some(lowers)) = (&self.union, &self.lowers) else {
            return Ok(());
        };
        if !union.has_index_entries() {
            return Ok(());
        }
        let mut linked = Vec::new();
        self.hard_linked(lowers, ROOT_INO, Path::new(""), &mut linked)?;
        linked.sort();
        for path in linked {
            if seen.contains(&path) {
                continue;
            }
            let ino = match lookup_path(union, &path) {
                Ok(ino) => ino,
                Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => continue,
                Err(e) => return Err(self.io(&path, e).into()),
            };
            if !union.is_indexed(ino) {
                continue;
            }
            let obj = self.union_object(union, ino, &path)?;
            f(Change {
                path,
                what: What::Object(Box::new(obj)),
            })?;
        }
        Ok(())
    }

    /// Paths of the lowers' regular files with more than one name.
    fn hard_linked(
        &self,
        view: &Overlay,
        dir: Ino,
        rel: &Path,
        out: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let io = |errno| self.io(rel, errno);
        for e in view.read_dir(dir).map_err(io)? {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let path = rel.join(&e.name);
            if e.dtype == libc::DT_DIR {
                let ino = view.lookup(dir, &e.name).map_err(io)?.ino;
                self.hard_linked(view, ino, &path, out)?;
            } else if e.dtype == libc::DT_REG {
                let st = view.lookup(dir, &e.name).map_err(io)?.attr;
                if st.st_nlink > 1 {
                    out.push(path);
                }
            }
        }
        Ok(())
    }

    /// The data of a regular file of the change.
    pub fn open_content(&self, path: &Path, obj: &Object) -> Result<Content> {
        let io = |errno| self.io(path, errno);
        match &obj.source {
            Source::Upper { dir, name } => {
                let fd = fs::openat(dir.as_fd(), name, READ_CONTENT, 0).map_err(io)?;
                Ok(Content::Upper(std::fs::File::from(fd)))
            }
            Source::Union(ino) => {
                let union = self.union_for(path, "a metacopy file")?;
                let file = union.open(*ino, libc::O_RDONLY).map_err(io)?;
                Ok(Content::Union { file, offset: 0 })
            }
            Source::None => Err(io(Errno::EINVAL)),
        }
    }

    /// Whether the lowers have something at `path` (`None`: no lowers
    /// were given, so nobody knows).
    pub fn in_lowers(&self, path: &Path) -> Result<Option<bool>> {
        let Some(view) = &self.lowers else {
            return Ok(None);
        };
        match lookup_path(view, path) {
            Ok(_) => Ok(Some(true)),
            Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => Ok(Some(false)),
            Err(errno) => Err(self.io(path, errno)),
        }
    }

    /// The names the lowers have in directory `path` (none without lowers).
    pub fn lower_names(&self, path: &Path) -> Result<Vec<OsString>> {
        let Some(view) = &self.lowers else {
            return Ok(Vec::new());
        };
        let io = |errno| self.io(path, errno);
        let ino = match lookup_path(view, path) {
            Ok(i) => i,
            Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => return Ok(Vec::new()),
            Err(errno) => return Err(io(errno)),
        };
        let mut names: Vec<OsString> = match view.read_dir(ino) {
            Ok(v) => v.into_iter().map(|e| e.name).collect(),
            Err(e) if e == Errno::ENOTDIR => return Ok(Vec::new()),
            Err(errno) => return Err(io(errno)),
        };
        names.retain(|n| n != "." && n != "..");
        names.sort();
        Ok(names)
    }

    fn io(&self, path: &Path, errno: Errno) -> ChangesError {
        ChangesError::Io {
            path: self.upper.join(path),
            errno,
        }
    }

    fn union_for(&self, path: &Path, what: &'static str) -> Result<&Overlay> {
        self.union
            .as_ref()
            .ok_or_else(|| self.needs_lowers(path, what))
    }

    fn needs_lowers(&self, path: &Path, what: &'static str) -> ChangesError {
        ChangesError::NeedsLowers {
            path: self.upper.join(path),
            what,
        }
    }

    fn walk_upper<E: From<ChangesError>>(
        &self,
        dir: &Arc<OwnedFd>,
        rel: &Path,
        opaque: bool,
        f: &mut dyn FnMut(Change) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        // Every empty file gets a look for the whiteout attribute: a tool
        // other than the one that marks directories may have written it.
        let listed = read_layer_dir(dir.as_fd(), true, false).map_err(|e| self.io(rel, e))?;
        let opaque_here = opaque || listed.oci_opaque;
        let mut entries = listed.entries;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind, _) in entries {
            let path = rel.join(&name);
            match kind {
                // Under an opaque directory nothing below shows anyway.
                Kind::Whiteout | Kind::XWhiteout if opaque_here => {}
                Kind::Whiteout | Kind::XWhiteout => f(Change {
                    path,
                    what: What::Deleted,
                })?,
                Kind::Object(_) => self.upper_object(dir, &name, path, f)?,
            }
        }
        Ok(())
    }

    fn upper_object<E: From<ChangesError>>(
        &self,
        dir: &Arc<OwnedFd>,
        name: &OsStr,
        path: PathBuf,
        f: &mut dyn FnMut(Change) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let io = |errno| self.io(&path, errno);
        let d = dir.as_fd();
        let mut stat = fs::fstatat(d, name).map_err(io)?;
        let real_kind = stat.st_mode & libc::S_IFMT;
        let markers = Markers::read(d, name).map_err(io)?;
        if let Some(o) = &self.overrides {
            o.apply(d, name, &mut stat).map_err(io)?;
        }
        let copied_up = markers.origin.is_some();
        let redirected = real_kind == libc::S_IFDIR && markers.redirect.is_some();
        if redirected && self.union.is_some() {
            return self.redirected_dir(path, copied_up, f);
        }
        let mut obj = Object {
            stat,
            opaque: markers.opaque,
            copied_up,
            target: None,
            xattrs: user_xattrs(d, name).map_err(io)?,
            link_key: (false, stat.st_dev, stat.st_ino),
            incomplete: None,
            source: Source::None,
        };
        if redirected {
            obj.opaque = true;
            obj.incomplete = Some(self.needs_lowers(&path, "a renamed directory"));
        }
        // Hard links as the union counts them: a copy in the index may
        // share its inode with names the upper does not have.
        if real_kind != libc::S_IFDIR
            && stat.st_nlink > 1
            && let Some(union) = &self.union
        {
            let ino = lookup_path(union, &path).map_err(io)?;
            let ust = union.getattr(ino).map_err(io)?;
            obj.link_key = (true, ust.st_dev, ust.st_ino);
            obj.stat.st_nlink = ust.st_nlink;
        }
        match real_kind {
            libc::S_IFDIR => {
                let sub = fs::openat(d, name, DIR_FLAGS, 0).map_err(io)?;
                let sub = Arc::new(sub);
                if !obj.opaque {
                    obj.opaque = read_layer_dir(sub.as_fd(), false, false)
                        .map_err(io)?
                        .oci_opaque;
                }
                let opaque = obj.opaque;
                f(Change {
                    path: path.clone(),
                    what: What::Object(Box::new(obj)),
                })?;
                return self.walk_upper(&sub, &path, opaque, f);
            }
            libc::S_IFLNK => obj.target = Some(fs::readlinkat(d, name).map_err(io)?),
            libc::S_IFREG if stat.st_mode & libc::S_IFMT == libc::S_IFREG => {
                let metacopy = is_metacopy(d, name).map_err(io)?;
                obj.source = if metacopy && let Some(union) = &self.union {
                    Source::Union(lookup_path(union, &path).map_err(io)?)
                } else if metacopy {
                    obj.incomplete = Some(self.needs_lowers(&path, "a metacopy file"));
                    Source::None
                } else {
                    Source::Upper {
                        dir: dir.clone(),
                        name: name.to_os_string(),
                    }
                };
            }
            _ => {}
        }
        f(Change {
            path,
            what: What::Object(Box::new(obj)),
        })
    }

    /// A renamed directory: whole, from the union, and opaque (its content
    /// at this path is all it has).
    fn redirected_dir<E: From<ChangesError>>(
        &self,
        path: PathBuf,
        copied_up: bool,
        f: &mut dyn FnMut(Change) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let union = self.union_for(&path, "a renamed directory")?;
        let ino = lookup_path(union, &path).map_err(|e| self.io(&path, e))?;
        let mut obj = self.union_object(union, ino, &path)?;
        obj.opaque = true;
        obj.copied_up = copied_up;
        f(Change {
            path: path.clone(),
            what: What::Object(Box::new(obj)),
        })?;
        self.walk_union(union, ino, &path, f)
    }

    fn walk_union<E: From<ChangesError>>(
        &self,
        union: &Overlay,
        dir: Ino,
        rel: &Path,
        f: &mut dyn FnMut(Change) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let io = |errno| self.io(rel, errno);
        let mut names: Vec<OsString> = union
            .read_dir(dir)
            .map_err(io)?
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        for name in names {
            let path = rel.join(&name);
            let ino = union.lookup(dir, &name).map_err(|e| self.io(&path, e))?.ino;
            let obj = self.union_object(union, ino, &path)?;
            let is_dir = obj.stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
            f(Change {
                path: path.clone(),
                what: What::Object(Box::new(obj)),
            })?;
            if is_dir {
                self.walk_union(union, ino, &path, f)?;
            }
        }
        Ok(())
    }

    fn union_object(&self, union: &Overlay, ino: Ino, path: &Path) -> Result<Object> {
        let io = |errno| self.io(path, errno);
        let stat = union.getattr(ino).map_err(io)?;
        let kind = stat.st_mode & libc::S_IFMT;
        let mut xattrs = Vec::new();
        let list = match union.listxattr(ino) {
            Ok(l) => l,
            Err(e) if e == Errno::EOPNOTSUPP => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        for n in xattr::split_names(&list) {
            let size = union.getxattr(ino, n, &mut []).map_err(io)?;
            let mut v = vec![0u8; size];
            let got = union.getxattr(ino, n, &mut v).map_err(io)?;
            v.truncate(got);
            xattrs.push((n.to_os_string(), v));
        }
        xattrs.sort();
        Ok(Object {
            stat,
            opaque: false,
            copied_up: false,
            target: if kind == libc::S_IFLNK {
                Some(union.readlink(ino).map_err(io)?)
            } else {
                None
            },
            xattrs,
            link_key: (true, stat.st_dev, stat.st_ino),
            incomplete: None,
            source: if kind == libc::S_IFREG {
                Source::Union(ino)
            } else {
                Source::None
            },
        })
    }
}

/// The union inode of `path`, looked up from the root.
fn lookup_path(union: &Overlay, path: &Path) -> std::result::Result<Ino, Errno> {
    let mut ino = ROOT_INO;
    for c in path.components() {
        ino = union.lookup(ino, c.as_os_str())?.ino;
    }
    Ok(ino)
}

/// The attributes of `name` a user sees (the union's own left out), by
/// name.
fn user_xattrs(
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> std::result::Result<Vec<(OsString, Vec<u8>)>, Errno> {
    let list = match xattr::list_vec(dir, name) {
        Ok(l) => l,
        Err(e) if e == Errno::EOPNOTSUPP => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for n in xattr::split_names(&list) {
        if is_union_xattr(n) {
            continue;
        }
        // Another user's attribute may not be readable: not ours to copy.
        match xattr::get_vec(dir, name, n) {
            Ok(Some(v)) => out.push((n.to_os_string(), v)),
            Ok(None) => {}
            Err(e) if e == Errno::EACCES || e == Errno::EPERM || e == Errno::ENODATA => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}
