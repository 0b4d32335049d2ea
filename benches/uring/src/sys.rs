//! The only `unsafe` code of this benchmark: buffers the kernel writes into
//! outside of any Rust borrow, and io_uring submissions that point at them.
//!
//! Safety argument, once for the module: every buffer handed to the kernel
//! (a ring entry's header and payload, and the two-element iovec that
//! registers them) is allocated here, leaked, and never freed or moved, so
//! a pointer the kernel holds stays valid for the life of the process,
//! whatever the kernel does after the ring or the connection ends. The
//! kernel reads and writes those buffers only during `io_uring_enter` in
//! this thread (FUSE copies requests in the ring's task context), and Rust
//! code gets slices of them only through `&mut Queue`, which the caller
//! cannot hold across `submit_and_wait(&mut self)`: no reference is alive
//! while the kernel may write.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use io_uring::{IoUring, cqueue, opcode, squeue::Entry128, types};

/// `sizeof(struct fuse_uring_req_header)`: in_out[128], op_in[128],
/// `struct fuse_uring_ent_in_out` (32).
pub const HEADER_LEN: usize = 288;
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// A leaked allocation the kernel may write into.
struct Shared {
    ptr: NonNull<u8>,
    len: usize,
}

impl Shared {
    fn new(len: usize) -> Shared {
        let b: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let raw: *mut [u8] = Box::into_raw(b);
        Shared {
            ptr: NonNull::new(raw.cast::<u8>()).expect("Box::into_raw is never null"),
            len,
        }
    }
}

struct Ent {
    header: Shared,
    payload: Shared,
    /// `struct iovec[2]` for FUSE_IO_URING_CMD_REGISTER, leaked too.
    iov: NonNull<[libc::iovec; 2]>,
}

/// How the ring runs the kernel's completion work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRun {
    /// Default: task work interrupts the thread (TWA_SIGNAL).
    Plain,
    /// IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG.
    Coop,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN (libfuse's choice).
    Defer,
}

/// One FUSE ring queue served by one thread: an io_uring with 128-byte
/// SQEs and `depth` entries registered on `/dev/fuse`.
pub struct Queue {
    ring: IoUring<Entry128, cqueue::Entry>,
    ents: Vec<Ent>,
    dev: Arc<OwnedFd>,
    qid: u16,
}

fn uring_cmd(dev: &OwnedFd, cmd_op: u32, commit_id: u64, qid: u16) -> opcode::UringCmd80 {
    // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
    cmd[16..18].copy_from_slice(&qid.to_le_bytes());
    opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), cmd_op).cmd(cmd)
}

/// io-uring 0.7's `UringCmd80` has no setter for `sqe->len`, which
/// FUSE_IO_URING_CMD_REGISTER requires to be 2 (the iovec count).
fn with_len(e: Entry128, len: u32) -> Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)] (io_uring_sqe, [u8; 64])`, exactly
    // the kernel's 128-byte SQE, and made only of integers and unions of
    // integers, so any 128 bytes are a valid value. `len` is the `u32` at
    // byte 24 of `struct io_uring_sqe` (uapi/linux/io_uring.h).
    let mut b: [u8; 128] = unsafe { std::mem::transmute::<Entry128, [u8; 128]>(e) };
    b[24..28].copy_from_slice(&len.to_le_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], Entry128>(b) }
}

impl Queue {
    pub fn new(
        dev: Arc<OwnedFd>,
        qid: u16,
        depth: usize,
        payload_len: usize,
        taskrun: TaskRun,
    ) -> io::Result<Queue> {
        let mut b = IoUring::<Entry128, cqueue::Entry>::builder();
        match taskrun {
            TaskRun::Plain => {}
            TaskRun::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            TaskRun::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
        }
        let entries = u32::try_from(depth.next_power_of_two()).unwrap_or(1024);
        let ring = b.build(entries)?;
        let ents = (0..depth)
            .map(|_| {
                let header = Shared::new(HEADER_LEN);
                let payload = Shared::new(payload_len);
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.ptr.as_ptr().cast(),
                        iov_len: header.len,
                    },
                    libc::iovec {
                        iov_base: payload.ptr.as_ptr().cast(),
                        iov_len: payload.len,
                    },
                ]);
                let iov = NonNull::new(Box::into_raw(iov)).expect("Box::into_raw is never null");
                Ent {
                    header,
                    payload,
                    iov,
                }
            })
            .collect();
        Ok(Queue {
            ring,
            ents,
            dev,
            qid,
        })
    }

    pub fn depth(&self) -> usize {
        self.ents.len()
    }

    fn push(&mut self, e: &Entry128) -> io::Result<()> {
        loop {
            // SAFETY: the entry points only at this queue's leaked buffers
            // and iovecs (see the module comment) and at `dev`, which the
            // queue keeps open.
            let pushed = unsafe { self.ring.submission().push(e) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Queue FUSE_IO_URING_CMD_REGISTER of entry `i`: hand its buffers to
    /// the kernel; it completes when a request has been written into them.
    pub fn register(&mut self, i: usize) -> io::Result<()> {
        let iov = self.ents[i].iov.as_ptr() as u64;
        let e = uring_cmd(&self.dev, FUSE_IO_URING_CMD_REGISTER, 0, self.qid)
            .addr(Some(iov))
            .build()
            .user_data(i as u64);
        self.push(&with_len(e, 2))
    }

    /// Queue FUSE_IO_URING_CMD_COMMIT_AND_FETCH of entry `i`: the reply in
    /// its buffers goes to the kernel, and the entry waits for the next
    /// request.
    pub fn commit(&mut self, i: usize, commit_id: u64) -> io::Result<()> {
        let e = uring_cmd(
            &self.dev,
            FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
            commit_id,
            self.qid,
        )
        .build()
        .user_data(i as u64);
        self.push(&e)
    }

    /// Submit what is queued and wait for at least `want` completions.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.ring.submit_and_wait(want)
    }

    /// The next completion: (entry, result).
    pub fn pop(&mut self) -> Option<(usize, i32)> {
        self.ring.completion().next().map(|c| {
            (
                usize::try_from(c.user_data()).unwrap_or(usize::MAX),
                c.result(),
            )
        })
    }

    /// Entry `i`'s header and payload buffers.
    pub fn buffers(&mut self, i: usize) -> (&mut [u8], &mut [u8]) {
        let e = &self.ents[i];
        // SAFETY: the allocations are live for the process (leaked), of
        // these lengths, distinct, and borrowed only through `&mut self`;
        // the kernel writes them only inside `submit_and_wait`.
        unsafe {
            (
                std::slice::from_raw_parts_mut(e.header.ptr.as_ptr(), e.header.len),
                std::slice::from_raw_parts_mut(e.payload.ptr.as_ptr(), e.payload.len),
            )
        }
    }
}
