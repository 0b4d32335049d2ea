//! A passthrough filesystem to one backing directory, the same behind both
//! transports. Nodes are paths relative to the backing directory; every
//! operation is one or two `*at()` system calls on it, so the work per
//! request is what a union's upper layer costs, and the rest is transport.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::abi::{self, Attr, Req};

/// Entry and attribute timeout: the backing directory changes only
/// through this server, as a union's upper changes only through plyfs.
const TTL: u64 = 86_400;

pub enum Outcome {
    /// Reply with the body that was written to the output buffer.
    Reply,
    /// Reply with this error.
    Error(i32),
    /// The operation has no reply (FORGET, INTERRUPT).
    None,
}

struct Node {
    path: PathBuf,
    nlookup: u64,
}

#[derive(Default)]
struct Nodes {
    by_id: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

struct DirEntry {
    name: OsString,
    ino: u64,
    typ: u32,
}

pub struct Fs {
    root: OwnedFd,
    root_path: PathBuf,
    nodes: Mutex<Nodes>,
    files: Mutex<HashMap<u64, Arc<OwnedFd>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn err(e: Errno) -> Outcome {
    Outcome::Error(-e.raw_os_error())
}

fn attr_of(st: &rustix::fs::Stat) -> Attr {
    let t = |s: i64, ns: u64| (s, u32::try_from(ns).unwrap_or(0));
    Attr {
        ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: t(st.st_atime, st.st_atime_nsec),
        mtime: t(st.st_mtime, st.st_mtime_nsec),
        ctime: t(st.st_ctime, st.st_ctime_nsec),
        mode: st.st_mode,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: u32::try_from(st.st_rdev).unwrap_or(0),
        blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
    }
}

fn dtype(ft: std::fs::FileType) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        4
    } else if ft.is_symlink() {
        10
    } else if ft.is_char_device() {
        2
    } else if ft.is_block_device() {
        6
    } else if ft.is_fifo() {
        1
    } else if ft.is_socket() {
        12
    } else {
        8
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return err(e),
        }
    };
}

impl Fs {
    pub fn new(root: &Path) -> std::io::Result<Fs> {
        let fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        let mut nodes = Nodes {
            next: 2,
            ..Nodes::default()
        };
        nodes.by_id.insert(
            1,
            Node {
                path: PathBuf::from("."),
                nlookup: 1,
            },
        );
        nodes.by_path.insert(PathBuf::from("."), 1);
        Ok(Fs {
            root: fd,
            root_path: root.to_path_buf(),
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    fn path(&self, id: u64) -> Result<PathBuf, Errno> {
        lock(&self.nodes)
            .by_id
            .get(&id)
            .map(|n| n.path.clone())
            .ok_or(Errno::STALE)
    }

    fn child(&self, parent: u64, name: &[u8]) -> Result<PathBuf, Errno> {
        if name.is_empty() || name.contains(&b'/') {
            return Err(Errno::INVAL);
        }
        let p = self.path(parent)?;
        let name = OsStr::from_bytes(name);
        Ok(if p.as_os_str() == "." {
            PathBuf::from(name)
        } else {
            p.join(name)
        })
    }

    fn stat(&self, path: &Path) -> Result<Attr, Errno> {
        rustix::fs::statat(&self.root, path, AtFlags::SYMLINK_NOFOLLOW).map(|s| attr_of(&s))
    }

    /// Look up `path` and count a lookup of its node: the entry reply.
    fn entry(&self, path: PathBuf, out: &mut Vec<u8>) -> Outcome {
        let attr = tri!(self.stat(&path));
        let id = self.remember(path);
        abi::entry_out(out, id, &attr, TTL);
        Outcome::Reply
    }

    fn remember(&self, path: PathBuf) -> u64 {
        let mut n = lock(&self.nodes);
        if let Some(&id) = n.by_path.get(&path) {
            if let Some(node) = n.by_id.get_mut(&id) {
                node.nlookup += 1;
            }
            return id;
        }
        let id = n.next;
        n.next += 1;
        n.by_path.insert(path.clone(), id);
        n.by_id.insert(id, Node { path, nlookup: 1 });
        id
    }

    fn forget(&self, id: u64, count: u64) {
        if id == 1 {
            return;
        }
        let mut n = lock(&self.nodes);
        let gone = match n.by_id.get_mut(&id) {
            Some(node) => {
                node.nlookup = node.nlookup.saturating_sub(count);
                node.nlookup == 0
            }
            None => false,
        };
        if gone
            && let Some(node) = n.by_id.remove(&id)
            && n.by_path.get(&node.path) == Some(&id)
        {
            n.by_path.remove(&node.path);
        }
    }

    /// A name was removed: a later one of the same name is a new node.
    fn unlinked(&self, path: &Path) {
        lock(&self.nodes).by_path.remove(path);
    }

    fn file(&self, fh: u64) -> Result<Arc<OwnedFd>, Errno> {
        lock(&self.files).get(&fh).cloned().ok_or(Errno::BADF)
    }

    fn add_file(&self, fd: OwnedFd) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, Arc::new(fd));
        fh
    }

    /// Handle one request; the reply body goes to `out` (empty on entry).
    pub fn handle(&self, r: &Req<'_>, out: &mut Vec<u8>) -> Outcome {
        let id = r.h.nodeid;
        match r.h.opcode {
            abi::LOOKUP => {
                let path = tri!(self.child(id, r.name(0)));
                self.entry(path, out)
            }
            abi::FORGET => {
                self.forget(id, abi::u64_at(r.op, 0));
                Outcome::None
            }
            abi::BATCH_FORGET => {
                let count = abi::u32_at(r.op, 0) as usize;
                for i in 0..count {
                    self.forget(abi::u64_at(r.rest, i * 16), abi::u64_at(r.rest, i * 16 + 8));
                }
                Outcome::None
            }
            abi::GETATTR => {
                let attr = tri!(self.path(id).and_then(|p| self.stat(&p)));
                abi::attr_out(out, &attr, TTL);
                Outcome::Reply
            }
            abi::SETATTR => self.setattr(r, out),
            abi::READLINK => {
                let p = tri!(self.path(id));
                let t = tri!(rustix::fs::readlinkat(&self.root, &p, Vec::new()));
                out.extend_from_slice(t.as_bytes());
                Outcome::Reply
            }
            abi::SYMLINK => {
                let path = tri!(self.child(id, r.name(0)));
                let target = OsStr::from_bytes(r.name(1));
                tri!(rustix::fs::symlinkat(target, &self.root, &path));
                tri!(self.chown_to_caller(r, &path));
                self.entry(path, out)
            }
            abi::MKNOD => {
                let path = tri!(self.child(id, r.name(0)));
                let mode = abi::u32_at(r.op, 0);
                let rdev = abi::u32_at(r.op, 4);
                let ft = rustix::fs::FileType::from_raw_mode(mode);
                tri!(rustix::fs::mknodat(
                    &self.root,
                    &path,
                    ft,
                    Mode::from_raw_mode(mode & 0o7777),
                    u64::from(rdev)
                ));
                tri!(self.chown_to_caller(r, &path));
                self.entry(path, out)
            }
            abi::MKDIR => {
                let path = tri!(self.child(id, r.name(0)));
                let mode = abi::u32_at(r.op, 0);
                tri!(rustix::fs::mkdirat(
                    &self.root,
                    &path,
                    Mode::from_raw_mode(mode & 0o7777)
                ));
                tri!(self.chown_to_caller(r, &path));
                self.entry(path, out)
            }
            abi::UNLINK | abi::RMDIR => {
                let path = tri!(self.child(id, r.name(0)));
                let flags = if r.h.opcode == abi::RMDIR {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                tri!(rustix::fs::unlinkat(&self.root, &path, flags));
                self.unlinked(&path);
                Outcome::Reply
            }
            abi::RENAME | abi::RENAME2 => {
                let newdir = abi::u64_at(r.op, 0);
                if r.h.opcode == abi::RENAME2 && abi::u32_at(r.op, 8) != 0 {
                    return Outcome::Error(-libc_einval());
                }
                let from = tri!(self.child(id, r.name(0)));
                let to = tri!(self.child(newdir, r.name(1)));
                tri!(rustix::fs::renameat(&self.root, &from, &self.root, &to));
                self.renamed(&from, &to);
                Outcome::Reply
            }
            abi::LINK => {
                let old = tri!(self.path(abi::u64_at(r.op, 0)));
                let path = tri!(self.child(id, r.name(0)));
                tri!(rustix::fs::linkat(
                    &self.root,
                    &old,
                    &self.root,
                    &path,
                    AtFlags::empty()
                ));
                self.entry(path, out)
            }
            abi::OPEN => {
                let p = tri!(self.path(id));
                let flags = open_flags(abi::u32_at(r.op, 0));
                let fd = tri!(rustix::fs::openat(&self.root, &p, flags, Mode::empty()));
                abi::open_out(out, self.add_file(fd), 0);
                Outcome::Reply
            }
            abi::CREATE => {
                let path = tri!(self.child(id, r.name(0)));
                let raw = OFlags::from_bits_retain(abi::u32_at(r.op, 0)) & !OFlags::NOCTTY;
                let flags = raw | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW;
                let mode = Mode::from_raw_mode(abi::u32_at(r.op, 4) & 0o7777);
                let fd = tri!(rustix::fs::openat(&self.root, &path, flags, mode));
                tri!(self.chown_to_caller(r, &path));
                let attr = tri!(rustix::fs::fstat(&fd).map(|s| attr_of(&s)));
                let nid = self.remember(path);
                abi::entry_out(out, nid, &attr, TTL);
                abi::open_out(out, self.add_file(fd), 0);
                Outcome::Reply
            }
            abi::READ => {
                let fd = tri!(self.file(abi::u64_at(r.op, 0)));
                let off = abi::u64_at(r.op, 8);
                let size = abi::u32_at(r.op, 16) as usize;
                out.resize(size, 0);
                let n = tri!(rustix::io::pread(&*fd, &mut out[..], off));
                out.truncate(n);
                Outcome::Reply
            }
            abi::WRITE => {
                let fd = tri!(self.file(abi::u64_at(r.op, 0)));
                let off = abi::u64_at(r.op, 8);
                let size = abi::u32_at(r.op, 16) as usize;
                let data = r.rest.get(..size).unwrap_or(r.rest);
                let n = tri!(rustix::io::pwrite(&*fd, data, off));
                out.extend_from_slice(&u32::try_from(n).unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&[0; 4]);
                Outcome::Reply
            }
            abi::RELEASE => {
                lock(&self.files).remove(&abi::u64_at(r.op, 0));
                Outcome::Reply
            }
            abi::FLUSH => Outcome::Reply,
            abi::FSYNC => {
                let fd = tri!(self.file(abi::u64_at(r.op, 0)));
                if abi::u32_at(r.op, 8) & 1 != 0 {
                    tri!(rustix::fs::fdatasync(&*fd));
                } else {
                    tri!(rustix::fs::fsync(&*fd));
                }
                Outcome::Reply
            }
            abi::STATFS => self.statfs(out),
            abi::GETXATTR => Outcome::Error(-61), // ENODATA
            abi::LISTXATTR => {
                if abi::u32_at(r.op, 0) == 0 {
                    out.extend_from_slice(&[0; 8]);
                }
                Outcome::Reply
            }
            abi::SETXATTR | abi::REMOVEXATTR => Outcome::Error(-95), // EOPNOTSUPP
            abi::OPENDIR => self.opendir(id, out),
            abi::READDIR | abi::READDIRPLUS => self.readdir(r, out),
            abi::RELEASEDIR => {
                lock(&self.dirs).remove(&abi::u64_at(r.op, 0));
                Outcome::Reply
            }
            abi::FSYNCDIR => Outcome::Reply,
            abi::INTERRUPT => Outcome::None,
            abi::DESTROY => Outcome::Reply,
            _ => Outcome::Error(-38), // ENOSYS
        }
    }

    /// New objects belong to the caller, as the kernel makes them.
    fn chown_to_caller(&self, r: &Req<'_>, path: &Path) -> Result<(), Errno> {
        if r.h.uid == 0 && r.h.gid == 0 {
            return Ok(());
        }
        rustix::fs::chownat(
            &self.root,
            path,
            Some(rustix::fs::Uid::from_raw(r.h.uid)),
            Some(rustix::fs::Gid::from_raw(r.h.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
    }

    fn setattr(&self, r: &Req<'_>, out: &mut Vec<u8>) -> Outcome {
        let op = r.op;
        let valid = abi::u32_at(op, 0);
        let p = tri!(self.path(r.h.nodeid));
        if valid & abi::FATTR_MODE != 0 {
            let mode = Mode::from_raw_mode(abi::u32_at(op, 68) & 0o7777);
            tri!(rustix::fs::chmodat(&self.root, &p, mode, AtFlags::empty()));
        }
        if valid & (abi::FATTR_UID | abi::FATTR_GID) != 0 {
            let uid = (valid & abi::FATTR_UID != 0)
                .then(|| rustix::fs::Uid::from_raw(abi::u32_at(op, 76)));
            let gid = (valid & abi::FATTR_GID != 0)
                .then(|| rustix::fs::Gid::from_raw(abi::u32_at(op, 80)));
            tri!(rustix::fs::chownat(
                &self.root,
                &p,
                uid,
                gid,
                AtFlags::SYMLINK_NOFOLLOW
            ));
        }
        if valid & abi::FATTR_SIZE != 0 {
            let size = abi::u64_at(op, 16);
            let fd = if valid & abi::FATTR_FH != 0 {
                self.file(abi::u64_at(op, 8)).ok()
            } else {
                None
            };
            match fd {
                Some(fd) => tri!(rustix::fs::ftruncate(&*fd, size)),
                None => {
                    let fd = tri!(rustix::fs::openat(
                        &self.root,
                        &p,
                        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty()
                    ));
                    tri!(rustix::fs::ftruncate(&fd, size));
                }
            }
        }
        if valid & (abi::FATTR_ATIME | abi::FATTR_MTIME) != 0 {
            let ts = |set: u32, now: u32, s: usize, ns: usize| {
                if valid & now != 0 {
                    Timespec {
                        tv_sec: 0,
                        tv_nsec: rustix::fs::UTIME_NOW,
                    }
                } else if valid & set != 0 {
                    Timespec {
                        tv_sec: i64::try_from(abi::u64_at(op, s)).unwrap_or(0),
                        tv_nsec: i64::from(abi::u32_at(op, ns)),
                    }
                } else {
                    Timespec {
                        tv_sec: 0,
                        tv_nsec: rustix::fs::UTIME_OMIT,
                    }
                }
            };
            let times = Timestamps {
                last_access: ts(abi::FATTR_ATIME, abi::FATTR_ATIME_NOW, 32, 56),
                last_modification: ts(abi::FATTR_MTIME, abi::FATTR_MTIME_NOW, 40, 60),
            };
            tri!(rustix::fs::utimensat(
                &self.root,
                &p,
                &times,
                AtFlags::SYMLINK_NOFOLLOW
            ));
        }
        let attr = tri!(self.stat(&p));
        abi::attr_out(out, &attr, TTL);
        Outcome::Reply
    }

    fn renamed(&self, from: &Path, to: &Path) {
        let mut n = lock(&self.nodes);
        n.by_path.remove(to);
        let moved: Vec<(PathBuf, u64)> = n
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &id)| (p.clone(), id))
            .collect();
        for (p, id) in moved {
            n.by_path.remove(&p);
            let rel = p.strip_prefix(from).unwrap_or(Path::new(""));
            let np = if rel.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rel)
            };
            if let Some(node) = n.by_id.get_mut(&id) {
                node.path = np.clone();
            }
            n.by_path.insert(np, id);
        }
    }

    fn statfs(&self, out: &mut Vec<u8>) -> Outcome {
        let s = tri!(rustix::fs::fstatvfs(&self.root));
        let mut b = [0u8; 80];
        abi::put_u64(&mut b, 0, s.f_blocks);
        abi::put_u64(&mut b, 8, s.f_bfree);
        abi::put_u64(&mut b, 16, s.f_bavail);
        abi::put_u64(&mut b, 24, s.f_files);
        abi::put_u64(&mut b, 32, s.f_ffree);
        abi::put_u32(&mut b, 40, u32::try_from(s.f_bsize).unwrap_or(4096));
        abi::put_u32(&mut b, 44, u32::try_from(s.f_namemax).unwrap_or(255));
        abi::put_u32(&mut b, 48, u32::try_from(s.f_frsize).unwrap_or(4096));
        out.extend_from_slice(&b);
        Outcome::Reply
    }

    fn opendir(&self, id: u64, out: &mut Vec<u8>) -> Outcome {
        let p = tri!(self.path(id));
        let abs = self.root_path.join(&p);
        let rd = match std::fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) => return Outcome::Error(-e.raw_os_error().unwrap_or(5)),
        };
        let mut list = Vec::new();
        for e in rd.flatten() {
            use std::os::unix::fs::DirEntryExt;
            let typ = e.file_type().map_or(0, dtype);
            list.push(DirEntry {
                ino: e.ino(),
                typ,
                name: e.file_name(),
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(list));
        abi::open_out(out, fh, 0);
        Outcome::Reply
    }

    fn readdir(&self, r: &Req<'_>, out: &mut Vec<u8>) -> Outcome {
        let fh = abi::u64_at(r.op, 0);
        let off = usize::try_from(abi::u64_at(r.op, 8)).unwrap_or(usize::MAX);
        let size = abi::u32_at(r.op, 16) as usize;
        let plus = r.h.opcode == abi::READDIRPLUS;
        let Some(list) = lock(&self.dirs).get(&fh).cloned() else {
            return Outcome::Error(-9);
        };
        let dir = tri!(self.path(r.h.nodeid));
        for (i, e) in list.iter().enumerate().skip(off) {
            let name = e.name.as_bytes();
            let need = abi::dirent_len(name) + if plus { 128 } else { 0 };
            if out.len() + need > size {
                break;
            }
            let next = u64::try_from(i + 1).unwrap_or(u64::MAX);
            if plus {
                let path = if dir.as_os_str() == "." {
                    PathBuf::from(&e.name)
                } else {
                    dir.join(&e.name)
                };
                match self.stat(&path) {
                    Ok(attr) => {
                        let nid = self.remember(path);
                        abi::entry_out(out, nid, &attr, TTL);
                    }
                    Err(_) => abi::entry_out(out, 0, &Attr::default(), 0),
                }
            }
            abi::dirent(out, e.ino, next, e.typ, name);
        }
        Outcome::Reply
    }
}

fn libc_einval() -> i32 {
    Errno::INVAL.raw_os_error()
}

/// The flags of an open request as `openat` flags, never following a
/// final symlink, never making the server's controlling terminal.
fn open_flags(flags: u32) -> OFlags {
    let f = OFlags::from_bits_retain(flags) & !(OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY);
    f | OFlags::CLOEXEC | OFlags::NOFOLLOW
}
