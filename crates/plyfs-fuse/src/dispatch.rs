//! The `Filesystem` implementation: each request is handed to the core
//! (or to handles, listings and coherence) and its answer to the kernel.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use plyfs_core::SetAttr;
use tracing::info;

use crate::PlyFs;
use crate::answers::empty;
use crate::convert::{self, errno};
use crate::listings::Full;
use crate::passthrough::Answer;

impl Filesystem for PlyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags as F;
        // READDIRPLUS for every listing, not only its first chunk
        // (no FUSE_READDIRPLUS_AUTO): a walk or `ls -l` then finds every
        // entry cached instead of sending a LOOKUP each; a listing alone
        // (`ls -f`) pays the stats.
        let want = F::FUSE_DO_READDIRPLUS
            | F::FUSE_PARALLEL_DIROPS
            | F::FUSE_CACHE_SYMLINKS
            | F::FUSE_ATOMIC_O_TRUNC
            // File handles for fanotify only (AT_HANDLE_FID), none to
            // open: the kernel's overlayfs without nfs_export. Handles
            // plyfs could resolve only while the kernel caches the inode
            // would go stale (ESTALE) after drop_caches or a remount.
            | F::FUSE_NO_EXPORT_SUPPORT
            | F::FUSE_DIRECT_IO_ALLOW_MMAP
            | F::FUSE_HANDLE_KILLPRIV_V2;
        let supported = config.capabilities() & want;
        let _ = config.add_capabilities(supported);
        self.posix_acl = self.negotiate_acls(config);
        let data = self
            .handles
            .negotiate(config, &self.opts, self.ov.writable());
        info!(
            "FUSE session ready: {supported:?}, file data: {data}, POSIX ACLs: {}",
            self.posix_acl
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
        let _reading = self.coherence.reading(ino.0);
        let r = match fh.and_then(|fh| self.handles.get(fh).ok()) {
            Some(f) => self.ov.getattr_open(&f),
            None => self.ov.getattr(ino.0),
        };
        match r {
            Ok(st) => reply.attr(&self.attr_ttl(ino.0), &self.attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
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
        // An id without a mapping cannot be stored.
        let ids = &self.opts.ids;
        let (uid, gid) = match (
            uid.map(|u| ids.uids.to_disk(u)),
            gid.map(|g| ids.gids.to_disk(g)),
        ) {
            (Some(None), _) | (_, Some(None)) => return reply.error(fuser::Errno::EINVAL),
            (u, g) => (u.flatten(), g.flatten()),
        };
        // With FUSE_HANDLE_KILLPRIV_V2 the kernel asks the filesystem to
        // kill set-ID bits (FATTR_KILL_SUIDGID, which fuser does not hand
        // over): on a chown, on a truncate by a caller without CAP_FSETID,
        // and alone in an otherwise empty request for a write or a
        // chown(-1, -1). An empty request, or a truncate by someone other
        // than root, is therefore that.
        let caller = self.caller(req);
        let nothing = [mode, uid, gid].iter().all(Option::is_none)
            && size.is_none()
            && atime.is_none()
            && mtime.is_none();
        let kill = nothing || (size.is_some() && caller.uid != 0);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: convert::set_time(atime),
            mtime: convert::set_time(mtime),
            kill_privs: kill.then_some(caller),
        };
        let file = fh.and_then(|fh| self.handles.get(fh).ok());
        match self.ov.setattr(ino.0, &set, file.as_deref()) {
            Ok(st) => reply.attr(&self.attr_ttl(ino.0), &self.attr(&st)),
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
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.ov.mknod(
            parent.0,
            name,
            mode,
            u64::from(rdev),
            self.creator(req, umask),
        );
        self.reply_created(reply, r);
        self.coherence.changed(parent.0, true);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .ov
            .mkdir(parent.0, name, mode, self.creator(req, umask));
        self.reply_created(reply, r);
        self.coherence.changed(parent.0, true);
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
            .symlink(parent.0, link_name, target.as_os_str(), self.caller(req));
        self.reply_created(reply, r);
        self.coherence.changed(parent.0, true);
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
            self.coherence.changed(parent.0, true);
            self.coherence.changed(newparent.0, true);
            self.coherence.changed(done.moved, false);
            if let Some(other) = done.replaced {
                self.coherence.changed(other, false);
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
        self.coherence.changed(newparent.0, true);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self.ov.open(ino.0, self.handles.open_flags(flags.0));
        // O_TRUNC kills set-ID bits as a truncate does (the kernel's
        // FUSE_OPEN_KILL_SUIDGID, which fuser does not hand over).
        let caller = self.caller(req);
        if opened.is_ok() && flags.0 & libc::O_TRUNC != 0 && caller.uid != 0 {
            let _ = self.ov.kill_privs(ino.0, &caller);
        }
        match opened {
            Ok(file) => match self
                .handles
                .opened(&self.ov, ino.0, file, |fd| reply.open_backing(fd))
            {
                (fh, Answer::Passthrough(id)) => {
                    // Attributes cached before (lookup) must go: from now
                    // on they are answered uncached (see attr_ttl).
                    self.coherence.forget_attrs(ino.0);
                    reply.opened_passthrough(fh, FopenFlags::empty(), &id);
                }
                (fh, Answer::Plain(flags)) => reply.opened(fh, flags),
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
        let r = self.handles.get(fh).and_then(|f| {
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
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.handles.get(fh).and_then(|f| {
            if self.handles.writeback {
                f.write_keeping_mtime(data, offset)
            } else {
                f.write(data, offset)
            }
        });
        // FUSE_HANDLE_KILLPRIV_V2: a write by a caller without CAP_FSETID
        // kills set-ID bits here.
        if r.is_ok() && write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            let _ = self.ov.kill_privs(ino.0, &self.caller(req));
        }
        match r {
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
        self.handles.release(ino.0, fh);
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
        empty(
            reply,
            self.handles
                .get(fh)
                .and_then(|f| self.ov.fsync(&f, datasync)),
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
        let _reading = self.coherence.reading(ino.0);
        let r = self.listings.stream(&self.ov, ino.0, offset, |next, e| {
            let kind = convert::dtype_file_type(e.dtype);
            reply.add(INodeNo(e.ino), next, kind, &e.name).into()
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _reading = self.coherence.reading(ino.0);
        let ttl = self.opts.timeout;
        let r = self.listings.stream(&self.ov, ino.0, offset, |next, e| {
            if e.name == "." || e.name == ".." {
                // The kernel takes no lookup of these.
                let mut a = convert::negative_attr();
                a.ino = INodeNo(e.ino);
                a.kind = fuser::FileType::Directory;
                let zero = Duration::ZERO;
                return reply
                    .add(INodeNo(e.ino), next, &e.name, &zero, &a, Generation(0))
                    .into();
            }
            // Each entry counts as a lookup the kernel will forget.
            let Ok(entry) = self.ov.lookup(ino.0, &e.name) else {
                return Full::No;
            };
            let a = self.attr(&entry.attr);
            let generation = Generation(entry.generation);
            let ttl = if self.handles.passthrough.in_passthrough(entry.ino) {
                Duration::ZERO
            } else {
                ttl
            };
            let full = reply.add(INodeNo(entry.ino), next, &e.name, &ttl, &a, generation);
            if full {
                // Did not fit: the kernel never saw it.
                self.ov.forget(entry.ino, 1);
            }
            full.into()
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
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
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.set_xattr(req, ino.0, name, value, flags, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.get_xattr(ino.0, name, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.list_xattr(ino.0, size, reply);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_xattr(req, ino.0, name, reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.ov.access(ino.0, mask.bits(), self.caller(req)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let flags = self.handles.open_flags(flags);
        match self
            .ov
            .create(parent.0, name, mode, flags, self.creator(req, umask))
        {
            Ok((entry, file)) => {
                let (ttl, a, generation) = (
                    &self.opts.timeout,
                    self.attr(&entry.attr),
                    Generation(entry.generation),
                );
                match self
                    .handles
                    .opened(&self.ov, entry.ino, file, |fd| reply.open_backing(fd))
                {
                    (fh, Answer::Passthrough(id)) => {
                        reply.created_passthrough(
                            ttl,
                            &a,
                            generation,
                            fh,
                            FopenFlags::empty(),
                            &id,
                        );
                        // The kernel knows the inode only now.
                        self.coherence.forget_attrs(entry.ino);
                    }
                    (fh, Answer::Plain(flags)) => {
                        reply.created(ttl, &a, generation, fh, flags);
                    }
                }
                self.coherence.changed(parent.0, true);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        self.inode_flags_ioctl(ino.0, cmd, in_data, reply);
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
            self.handles
                .get(fh)
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
        match self.handles.get(fh).and_then(|f| f.lseek(offset, whence)) {
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
        // A reply says how much was copied in 32 bits.
        let len = len.min(u64::from(u32::MAX));
        let r = self.handles.get(fh_in).and_then(|src| {
            let dst = self.handles.get(fh_out)?;
            self.ov
                .copy_file_range(&src, offset_in, &dst, offset_out, len)
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }
}
