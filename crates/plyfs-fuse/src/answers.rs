//! Answers: requesters and attributes in the ids the mount shows (the id
//! mapping, both ways), and the reply shapes every request shares.

use fuser::{Generation, ReplyEmpty, ReplyEntry, Request};
use plyfs_core::{Caller, Entry, Errno};
use tracing::debug;

use crate::PlyFs;
use crate::convert::{self, attr, errno};

impl PlyFs {
    /// Who asks, in the ids the layers store.
    pub(crate) fn caller(&self, req: &Request) -> Caller {
        let (uid, gid) = self.opts.ids.caller_to_disk(req.uid(), req.gid());
        Caller {
            uid,
            gid,
            pid: req.pid(),
            umask: None,
        }
    }

    /// A stat as the kernel is told it, owners as the mount shows them.
    pub(crate) fn attr(&self, st: &plyfs_core::Stat) -> fuser::FileAttr {
        let mut a = attr(st);
        a.uid = self.opts.ids.uid_to_mount(a.uid);
        a.gid = self.opts.ids.gid_to_mount(a.gid);
        a
    }

    /// How long the kernel may keep `ino`'s attributes. Not at all while
    /// it is open in passthrough: a write through a shared mmap of the
    /// backing file changes its times, and nothing tells the kernel's
    /// FUSE (stat would show the times of before, until the timeout).
    pub(crate) fn attr_ttl(&self, ino: u64) -> std::time::Duration {
        if self.handles.passthrough.in_passthrough(ino) {
            std::time::Duration::ZERO
        } else {
            self.opts.timeout
        }
    }

    /// Answers a removal, then drops stale cached reads of what changed.
    pub(crate) fn removed(&self, reply: ReplyEmpty, parent: u64, r: Result<u64, Errno>) {
        let gone = r.as_ref().ok().copied();
        empty(reply, r.map(drop));
        if let Some(ino) = gone {
            self.coherence.changed(parent, true);
            self.coherence.changed(ino, false);
        }
    }

    pub(crate) fn reply_entry(&self, reply: ReplyEntry, r: Result<Entry, Errno>) {
        match r {
            Ok(e) => reply.entry(
                &self.attr_ttl(e.ino),
                &self.attr(&e.attr),
                Generation(e.generation),
            ),
            Err(e) if e == Errno::ENOENT => {
                // Cache the miss in the kernel too: only plyfs changes the
                // union, through the kernel, which keeps its cache right.
                reply.entry(&self.opts.timeout, &convert::negative_attr(), Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    pub(crate) fn reply_created(&self, reply: ReplyEntry, r: Result<Entry, Errno>) {
        match r {
            Ok(e) => {
                debug!(ino = e.ino, "created");
                reply.entry(
                    &self.opts.timeout,
                    &self.attr(&e.attr),
                    Generation(e.generation),
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

pub(crate) fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => {
            debug!("-> {e:?}");
            reply.error(errno(e))
        }
    }
}
