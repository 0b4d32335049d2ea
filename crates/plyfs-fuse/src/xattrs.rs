//! Extended attribute requests. Where the mount has none (`noxattrs`) the
//! kernel is answered ENOSYS: it remembers that for the connection and
//! answers EOPNOTSUPP itself from then on, so that no more of them (one
//! per write, for `security.capability`) cross into plyfs. ACL values
//! carry ids, which are translated as owners are (acl.rs).

use std::ffi::OsStr;

use fuser::{ReplyEmpty, ReplyXattr, Request};
use plyfs_core::{AclKind, Errno};

use crate::PlyFs;
use crate::convert::errno;

impl PlyFs {
    fn xattr_errno(&self, e: Errno) -> fuser::Errno {
        if self.ov.config().no_xattrs {
            fuser::Errno::ENOSYS
        } else {
            errno(e)
        }
    }

    fn xattr_done(&self, ino: u64, name: &OsStr, reply: ReplyEmpty, r: Result<(), Errno>) {
        // Without FUSE_POSIX_ACL (`noacl`) the kernel keeps the attributes
        // it has, but the upper's filesystem moved the mode with the ACL.
        if r.is_ok() && !self.posix_acl && AclKind::of(name).is_some() {
            self.coherence.forget_attrs(ino);
        }
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.xattr_errno(e)),
        }
        self.coherence.changed(ino, false);
    }

    pub(crate) fn set_xattr(
        &self,
        req: &Request,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        let caller = self.caller(req);
        let r = self
            .xattr_to_disk(name, value)
            .and_then(|v| self.ov.setxattr(ino, name, &v, flags, &caller));
        self.xattr_done(ino, name, reply, r);
    }

    pub(crate) fn remove_xattr(&self, req: &Request, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let r = self.ov.removexattr(ino, name, &self.caller(req));
        self.xattr_done(ino, name, reply, r);
    }

    pub(crate) fn get_xattr(&self, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        match self.ov.getxattr(ino, name, &mut buf) {
            Ok(n) if size == 0 => reply.size(n as u32),
            Ok(n) => match self.xattr_to_mount(name, &buf[..n]) {
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(self.xattr_errno(e)),
            },
            Err(e) => reply.error(self.xattr_errno(e)),
        }
    }

    pub(crate) fn list_xattr(&self, ino: u64, size: u32, reply: ReplyXattr) {
        match self.ov.listxattr(ino) {
            Ok(list) if size == 0 => reply.size(list.len() as u32),
            Ok(list) if list.len() > size as usize => reply.error(fuser::Errno::ERANGE),
            Ok(list) => reply.data(&list),
            Err(e) => reply.error(self.xattr_errno(e)),
        }
    }
}
