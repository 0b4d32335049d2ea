//! Extended attribute requests. Where the mount has none (`noxattrs`) the
//! kernel is answered ENOSYS: it remembers that for the connection and
//! answers EOPNOTSUPP itself from then on, so that no more of them (one
//! per write, for `security.capability`) cross into plyfs.

use std::ffi::OsStr;

use fuser::{ReplyEmpty, ReplyXattr};
use plyfs_core::Errno;

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

    fn xattr_done(&self, ino: u64, reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.xattr_errno(e)),
        }
        self.coherence.changed(ino, false);
    }

    pub(crate) fn set_xattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        self.xattr_done(ino, reply, self.ov.setxattr(ino, name, value, flags));
    }

    pub(crate) fn remove_xattr(&self, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        self.xattr_done(ino, reply, self.ov.removexattr(ino, name));
    }

    pub(crate) fn get_xattr(&self, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        match self.ov.getxattr(ino, name, &mut buf) {
            Ok(n) if size == 0 => reply.size(n as u32),
            Ok(n) => reply.data(&buf[..n]),
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
