//! ioctl requests. The kernel's FUSE sends the inode-flag ioctls
//! (FS_IOC_GETFLAGS / FS_IOC_SETFLAGS, for `lsattr` and `chattr`) on a
//! file it opens for the purpose, or on a directory without a plyfs
//! handle (opendir has no message here): they are answered by inode.
//! Everything else is ENOTTY, so that tools probing for features learn
//! "not supported".

use fuser::ReplyIoctl;

use crate::PlyFs;
use crate::convert::errno;

/// The command numbers as the kernel sends them (32 bits); the 32-bit
/// compat forms name the same int-sized argument.
const GETFLAGS: [u32; 2] = [libc::FS_IOC_GETFLAGS as u32, libc::FS_IOC32_GETFLAGS as u32];
const SETFLAGS: [u32; 2] = [libc::FS_IOC_SETFLAGS as u32, libc::FS_IOC32_SETFLAGS as u32];
/// _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct fsxattr): the
/// kernel asks these too when it sets flags.
const FSGETXATTR: u32 = 0x801c_581f;
const FSSETXATTR: u32 = 0x401c_5820;

impl PlyFs {
    pub(crate) fn inode_flags_ioctl(&self, ino: u64, cmd: u32, input: &[u8], reply: ReplyIoctl) {
        if GETFLAGS.contains(&cmd) {
            match self.ov.inode_flags(ino) {
                Ok(flags) => reply.ioctl(0, &flags.to_ne_bytes()),
                Err(e) => reply.error(errno(e)),
            }
        } else if SETFLAGS.contains(&cmd) {
            let Some(raw) = input.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                return reply.error(fuser::Errno::EINVAL);
            };
            self.flags_set(
                ino,
                self.ov.set_inode_flags(ino, u32::from_ne_bytes(raw)),
                reply,
            );
        } else if cmd == FSGETXATTR {
            match self.ov.fsxattr(ino) {
                Ok(v) => reply.ioctl(0, &v),
                Err(e) => reply.error(errno(e)),
            }
        } else if cmd == FSSETXATTR {
            let Some(v) = input.get(..28).and_then(|b| <[u8; 28]>::try_from(b).ok()) else {
                return reply.error(fuser::Errno::EINVAL);
            };
            self.flags_set(ino, self.ov.set_fsxattr(ino, &v), reply);
        } else {
            reply.error(fuser::Errno::ENOTTY);
        }
    }

    fn flags_set(&self, ino: u64, r: Result<(), plyfs_core::Errno>, reply: ReplyIoctl) {
        match r {
            Ok(()) => {
                // The change time moved on the upper copy.
                self.coherence.forget_attrs(ino);
                reply.ioctl(0, &[]);
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}
