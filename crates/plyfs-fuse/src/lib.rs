//! plyfs-fuse: a `fuser::Filesystem` over plyfs-core. It translates
//! requests and replies and owns what is FUSE's business: file handles,
//! kernel cache timeouts, readdirplus, passthrough.

mod convert;
mod mount;
mod passthrough;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use plyfs_core::attr::SetAttr;
use plyfs_core::file::OpenFile;
use plyfs_core::{Caller, DirEntry, Entry, Errno, Overlay};
use tracing::{debug, info};

pub use mount::{MountSpec, Mounted, Unmounter, mount};

use convert::{attr, errno};

/// How the kernel may cache what plyfs tells it.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// How long the kernel may trust entries and attributes.
    pub timeout: Duration,
    /// Request threads.
    pub threads: usize,
    /// Hand open files to the kernel (FUSE passthrough) where allowed.
    pub passthrough: bool,
    /// Let the kernel cache writes (FUSE writeback cache) when passthrough
    /// is not in use: the kernel allows one or the other.
    pub writeback: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            timeout: Duration::from_secs(1_000_000_000),
            threads: default_threads(),
            passthrough: true,
            writeback: true,
        }
    }
}

/// Requests block in I/O (a copy-up can take seconds), so more threads
/// than cores keep the others moving.
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .clamp(4, 16)
}

/// An open file: plyfs's handle, and the backing the kernel reads and
/// writes directly when in passthrough.
struct Handle {
    file: Arc<OpenFile>,
    backing: Option<Arc<fuser::BackingId>>,
}

/// The union as a FUSE filesystem.
pub struct PlyFs {
    ov: Arc<Overlay>,
    opts: FuseOptions,
    files: DashMap<u64, Handle>,
    /// Directory listings being read, by directory.
    dirs: DashMap<u64, Arc<Vec<DirEntry>>>,
    next_fh: AtomicU64,
    passthrough: passthrough::Passthrough,
    /// The kernel caches writes (negotiated at init).
    writeback: bool,
    /// Requests reading attributes or listings, in flight, by inode.
    reading: DashMap<u64, u32>,
    /// Set once the session exists.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

/// Counts a read of `ino`'s attributes or listing until dropped (after
/// the reply went out).
struct Reading<'a> {
    fs: &'a PlyFs,
    ino: u64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.fs.reading.remove_if_mut(&self.ino, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

impl PlyFs {
    pub fn new(
        ov: Arc<Overlay>,
        opts: FuseOptions,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    ) -> PlyFs {
        PlyFs {
            ov,
            opts,
            files: DashMap::new(),
            dirs: DashMap::new(),
            next_fh: AtomicU64::new(1),
            passthrough: passthrough::Passthrough::new(),
            writeback: false,
            reading: DashMap::new(),
            notifier,
        }
    }

    /// With the writeback cache, the kernel reads the rest of a page around
    /// a partial write through whichever open wrote, and appends at the end
    /// of file as it knows it: an open for writing is made read-write, and
    /// O_APPEND is left to the kernel.
    fn open_flags(&self, flags: i32) -> i32 {
        if !self.writeback {
            return flags;
        }
        let flags = flags & !libc::O_APPEND;
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            (flags & !libc::O_ACCMODE) | libc::O_RDWR
        } else {
            flags
        }
    }

    /// Decides how the kernel does the I/O of a new open of `ino`
    /// (passthrough or page cache) and records the handle, before the
    /// kernel hears of it: the next request on it may come at once.
    fn opened(
        &self,
        ino: u64,
        file: Arc<OpenFile>,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<fuser::BackingId>,
    ) -> (FileHandle, passthrough::Answer) {
        let answer = self.passthrough.answer(
            ino,
            &file,
            self.ov.writable(),
            || self.ov.backing_fd(&file),
            register,
        );
        let backing = match &answer {
            passthrough::Answer::Passthrough(id) => Some(id.clone()),
            passthrough::Answer::Plain(_) => None,
        };
        let fh = self.fh();
        self.files.insert(fh, Handle { file, backing });
        (FileHandle(fh), answer)
    }

    fn reading(&self, ino: u64) -> Reading<'_> {
        *self.reading.entry(ino).or_insert(0) += 1;
        Reading { fs: self, ino }
    }

    /// After a change to `ino` was answered: a read of it answered
    /// concurrently may have reached the kernel after the change and be
    /// cached as current. An explicit invalidation (which the kernel
    /// orders against such replies) drops it. Nothing to do, and nothing
    /// done, when no read was in flight. `listing`: also its cached
    /// directory listing.
    fn changed(&self, ino: u64, listing: bool) {
        if !self.reading.contains_key(&ino) {
            return;
        }
        if let Some(n) = self.notifier.get() {
            let offset = if listing { 0 } else { -1 };
            if let Err(e) = n.inval_inode(INodeNo(ino), offset, 0) {
                debug!("invalidation of {ino} failed: {e}");
            }
        }
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .get(&fh.0)
            .map(|h| h.file.clone())
            .ok_or(Errno::EBADF)
    }

    /// Answers a removal, then drops stale cached reads of what changed.
    fn removed(&self, reply: ReplyEmpty, parent: u64, r: Result<u64, Errno>) {
        let gone = r.as_ref().ok().copied();
        empty(reply, r.map(drop));
        if let Some(ino) = gone {
            self.changed(parent, true);
            self.changed(ino, false);
        }
    }

    /// The listing a readdir at `offset` is served from: made afresh at
    /// the start of a stream, kept for the rest of it.
    fn listing(&self, ino: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        if offset != 0
            && let Some(l) = self.dirs.get(&ino)
        {
            return Ok(l.clone());
        }
        let l = Arc::new(self.ov.read_dir(ino)?);
        self.dirs.insert(ino, l.clone());
        Ok(l)
    }

    fn reply_entry(&self, reply: ReplyEntry, r: Result<Entry, Errno>) {
        match r {
            Ok(e) => reply.entry(&self.opts.timeout, &attr(&e.attr), Generation(e.generation)),
            Err(e) if e == Errno::ENOENT => {
                // Cache the miss in the kernel too: only plyfs changes the
                // union, through the kernel, which keeps its cache right.
                reply.entry(&self.opts.timeout, &convert::negative_attr(), Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Filesystem for PlyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags as F;
        let want = F::FUSE_DO_READDIRPLUS
            | F::FUSE_READDIRPLUS_AUTO
            | F::FUSE_PARALLEL_DIROPS
            | F::FUSE_CACHE_SYMLINKS
            | F::FUSE_ATOMIC_O_TRUNC
            | F::FUSE_EXPORT_SUPPORT
            | F::FUSE_DIRECT_IO_ALLOW_MMAP;
        let supported = config.capabilities() & want;
        let _ = config.add_capabilities(supported);
        // Passthrough needs CAP_SYS_ADMIN over the system; the backing
        // registration of the first open would fail without it.
        if self.opts.passthrough
            && config.capabilities().contains(F::FUSE_PASSTHROUGH)
            && plyfs_core::sys::process::has_system_sys_admin()
            && config.add_capabilities(F::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.enable();
        } else if self.opts.writeback
            && self.ov.writable()
            && config.add_capabilities(F::FUSE_WRITEBACK_CACHE).is_ok()
        {
            // Safe because only plyfs changes the upper, and only on the
            // kernel's requests: the sizes and times the kernel keeps while
            // it caches writes are the true ones.
            self.writeback = true;
        }
        info!(
            "FUSE session ready: {supported:?}, file data: {}",
            if self.passthrough.enabled() {
                "passthrough"
            } else if self.writeback {
                "through plyfs, writeback cache"
            } else {
                "through plyfs"
            }
        );
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.ov.save_lower_index() {
            tracing::warn!("cannot save the lower index: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.reply_entry(reply, self.ov.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ov.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _reading = self.reading(ino.0);
        let r = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(f) => self.ov.getattr_open(&f),
            None => self.ov.getattr(ino.0),
        };
        match r {
            Ok(st) => reply.attr(&self.opts.timeout, &attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: convert::set_time(atime),
            mtime: convert::set_time(mtime),
        };
        let file = fh.and_then(|fh| self.file(fh).ok());
        match self.ov.setattr(ino.0, &set, file.as_deref()) {
            Ok(st) => reply.attr(&self.opts.timeout, &attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ov.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .ov
            .mknod(parent.0, name, mode, u64::from(rdev), caller(req));
        self.reply_created(reply, r);
        self.changed(parent.0, true);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.ov.mkdir(parent.0, name, mode, caller(req));
        self.reply_created(reply, r);
        self.changed(parent.0, true);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.ov.unlink(parent.0, name);
        self.removed(reply, parent.0, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.ov.rmdir(parent.0, name);
        self.removed(reply, parent.0, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self
            .ov
            .symlink(parent.0, link_name, target.as_os_str(), caller(req));
        self.reply_created(reply, r);
        self.changed(parent.0, true);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .ov
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        let done = r.as_ref().ok().copied();
        empty(reply, r.map(drop));
        if let Some(done) = done {
            self.changed(parent.0, true);
            self.changed(newparent.0, true);
            self.changed(done.moved, false);
            if let Some(other) = done.replaced {
                self.changed(other, false);
            }
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.ov.link(ino.0, newparent.0, newname);
        self.reply_created(reply, r);
        self.changed(newparent.0, true);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.ov.open(ino.0, self.open_flags(flags.0)) {
            Ok(file) => match self.opened(ino.0, file, |fd| reply.open_backing(fd)) {
                (fh, passthrough::Answer::Passthrough(id)) => {
                    reply.opened_passthrough(fh, FopenFlags::empty(), &id);
                }
                (fh, passthrough::Answer::Plain(flags)) => reply.opened(fh, flags),
            },
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.file(fh).and_then(|f| {
            let mut buf = vec![0u8; size as usize];
            let n = f.read(&mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        });
        match r {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.file(fh).and_then(|f| f.write(data, offset)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the upper when they are made (or, with the
        // writeback cache, before the kernel flushes), and locks are the
        // kernel's: nothing to do on close. ENOSYS tells the kernel to stop
        // sending FLUSH, which saves every close() a round trip.
        reply.error(fuser::Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some((_, h)) = self.files.remove(&fh.0) {
            let had_backing = h.backing.is_some();
            drop(h);
            self.passthrough.released(ino.0, had_backing);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let volatile = self.ov.config().volatile;
        empty(
            reply,
            self.file(fh).and_then(|f| f.fsync(datasync, volatile)),
        );
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Zero-message opendir: the kernel stops asking, opens directories
        // itself and keeps their listings cached (FOPEN_CACHE_DIR), which
        // it drops when a change goes through it. Listings are made per
        // directory on the first readdir instead.
        reply.error(fuser::Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _reading = self.reading(ino.0);
        let entries = match self.listing(ino.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        if offset as usize >= entries.len() {
            self.dirs.remove(&ino.0);
        }
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let kind = convert::dtype_file_type(e.dtype);
            if reply.add(INodeNo(e.ino), (i + 1) as u64, kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _reading = self.reading(ino.0);
        let entries = match self.listing(ino.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        if offset as usize >= entries.len() {
            self.dirs.remove(&ino.0);
        }
        let ttl = self.opts.timeout;
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let off = (i + 1) as u64;
            if e.name == "." || e.name == ".." {
                // The kernel takes no lookup of these.
                let mut a = convert::negative_attr();
                a.ino = INodeNo(e.ino);
                a.kind = fuser::FileType::Directory;
                if reply.add(
                    INodeNo(e.ino),
                    off,
                    &e.name,
                    &Duration::ZERO,
                    &a,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            // Each entry counts as a lookup the kernel will forget.
            let entry = match self.ov.lookup(ino.0, &e.name) {
                Ok(entry) => entry,
                Err(_) => continue,
            };
            let a = attr(&entry.attr);
            if reply.add(
                INodeNo(entry.ino),
                off,
                &e.name,
                &ttl,
                &a,
                Generation(entry.generation),
            ) {
                // Did not fit: the kernel never saw it.
                self.ov.forget(entry.ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.ov.fsyncdir(ino.0, datasync));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.ov.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.ov.setxattr(ino.0, name, value, flags));
        self.changed(ino.0, false);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        match self.ov.getxattr(ino.0, name, &mut buf) {
            Ok(n) if size == 0 => reply.size(n as u32),
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.ov.listxattr(ino.0) {
            Ok(list) if size == 0 => reply.size(list.len() as u32),
            Ok(list) if list.len() > size as usize => reply.error(fuser::Errno::ERANGE),
            Ok(list) => reply.data(&list),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.ov.removexattr(ino.0, name));
        self.changed(ino.0, false);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.ov.access(ino.0, mask.bits(), caller(req)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let flags = self.open_flags(flags);
        match self.ov.create(parent.0, name, mode, flags, caller(req)) {
            Ok((entry, file)) => {
                let (ttl, a, generation) = (
                    &self.opts.timeout,
                    attr(&entry.attr),
                    Generation(entry.generation),
                );
                match self.opened(entry.ino, file, |fd| reply.open_backing(fd)) {
                    (fh, passthrough::Answer::Passthrough(id)) => {
                        reply.created_passthrough(
                            ttl,
                            &a,
                            generation,
                            fh,
                            FopenFlags::empty(),
                            &id,
                        );
                    }
                    (fh, passthrough::Answer::Plain(flags)) => {
                        reply.created(ttl, &a, generation, fh, flags);
                    }
                }
                self.changed(parent.0, true);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // So that tools probing for features learn "not supported".
        reply.error(fuser::Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.file(fh)
                .and_then(|f| f.fallocate(mode, offset, length)),
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.file(fh).and_then(|f| f.lseek(offset, whence)) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = self.file(fh_in).and_then(|src| {
            let dst = self.file(fh_out)?;
            src.with_fd(|s| {
                dst.with_fd(|d| {
                    plyfs_core::sys::fs::copy_file_range(
                        s,
                        offset_in,
                        d,
                        offset_out,
                        len.min(u32::MAX as u64) as usize,
                    )
                })
            })
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl PlyFs {
    fn reply_created(&self, reply: ReplyEntry, r: Result<Entry, Errno>) {
        match r {
            Ok(e) => {
                debug!(ino = e.ino, "created");
                reply.entry(&self.opts.timeout, &attr(&e.attr), Generation(e.generation))
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => {
            debug!("-> {e:?}");
            reply.error(errno(e))
        }
    }
}
