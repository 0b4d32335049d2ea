//! The two transports, feeding the same `Fs::handle`.

use std::io::{self, IoSlice};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::io::Errno;

use crate::abi::{self, InHeader, Req};
use crate::fs::{Fs, Outcome};
use crate::sys::{self, Queue, TaskRun};

fn reply_parts(outcome: &Outcome, body: &[u8]) -> Option<(i32, usize)> {
    match outcome {
        Outcome::Reply => Some((0, body.len())),
        Outcome::Error(e) => Some((*e, 0)),
        Outcome::None => None,
    }
}

/// Read one request from /dev/fuse into `buf`: its length, or None when the
/// connection is gone.
pub fn read_request(dev: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::io::read(dev, &mut *buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::NOENT | Errno::INTR | Errno::AGAIN) => continue,
            Err(Errno::NODEV) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

pub fn write_reply(dev: &OwnedFd, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
    let h = abi::out_header(abi::OUT_HEADER_LEN + body.len(), error, unique);
    match rustix::io::writev(dev, &[IoSlice::new(&h), IoSlice::new(body)]) {
        // ENOENT: the request was interrupted and is gone.
        Ok(_) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The classic loop: read a request, handle it, write the reply. Returns
/// the number of requests served.
pub fn classic(fs: &Fs, dev: &OwnedFd, buf_len: usize) -> io::Result<u64> {
    let mut served = 0;
    let mut buf = vec![0u8; buf_len];
    let mut out = Vec::with_capacity(buf_len);
    while let Some(n) = read_request(dev, &mut buf)? {
        let msg = &buf[..n];
        let Some(h) = InHeader::parse(msg) else {
            return Err(io::Error::other("short request"));
        };
        let body = &msg[abi::IN_HEADER_LEN..];
        let split = abi::op_header_len(h.opcode).min(body.len());
        let req = Req {
            h,
            op: &body[..split],
            rest: &body[split..],
        };
        out.clear();
        let outcome = fs.handle(&req, &mut out);
        if let Some((err, len)) = reply_parts(&outcome, &out) {
            write_reply(dev, h.unique, err, &out[..len])?;
        }
        served += 1;
    }
    Ok(served)
}

/// One ring queue's thread: register `depth` entries, then answer each
/// completed entry with COMMIT_AND_FETCH (reply and wait, one SQE).
///
/// The protocol (fs/fuse/dev_uring.c, Documentation/filesystems/
/// fuse-io-uring.rst): after INIT was answered with FUSE_OVER_IO_URING,
/// each entry is an IORING_OP_URING_CMD on the /dev/fuse fd, in a ring of
/// 128-byte SQEs, whose 80-byte command is `struct fuse_uring_cmd_req`
/// (flags, commit_id, qid). REGISTER passes `sqe->addr` = two iovecs
/// (`struct fuse_uring_req_header` of 288 bytes, and a payload of at least
/// max(max_write, max_pages pages)), `sqe->len` = 2. The kernel routes a
/// request to the queue of the CPU its caller runs on, copies it in this
/// thread's context and completes the SQE: the in-header is in `in_out`,
/// the operation's own header in `op_in`, names and data in the payload,
/// `fuse_uring_ent_in_out` gives `commit_id` (the request's unique) and
/// `payload_sz`. The reply goes back the same way: out-header in `in_out`,
/// body in the payload, its size in `payload_sz`, and COMMIT_AND_FETCH
/// with that `commit_id` hands it over and waits for the next request.
/// Requests go through the ring only once every CPU's queue has an entry;
/// FORGET, INTERRUPT and notifications stay on /dev/fuse.
/// Returns the number of requests served.
pub fn ring(
    fs: &Fs,
    dev: Arc<OwnedFd>,
    qid: u16,
    depth: usize,
    payload_len: usize,
    taskrun: TaskRun,
) -> io::Result<u64> {
    let mut served = 0;
    let mut q = Queue::new(dev, qid, depth, payload_len, taskrun)?;
    for i in 0..q.depth() {
        q.register(i)?;
    }
    let mut out = Vec::with_capacity(payload_len);
    loop {
        match q.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(Errno::INTR.raw_os_error()) => continue,
            Err(e) => return Err(e),
        }
        while let Some((i, res)) = q.pop() {
            if res == -Errno::AGAIN.raw_os_error() {
                // Registered before the kernel took the INIT reply.
                std::thread::sleep(std::time::Duration::from_millis(1));
                q.register(i)?;
                continue;
            }
            if res < 0 {
                let e = Errno::from_raw_os_error(-res);
                return match e {
                    Errno::NOTCONN | Errno::CANCELED | Errno::CONNABORTED | Errno::NODEV => {
                        Ok(served)
                    }
                    e => Err(io::Error::other(format!("ring queue {qid}: {e}"))),
                };
            }
            let (hdr, payload) = q.buffers(i);
            let ent = &hdr[256..sys::HEADER_LEN];
            let commit_id = abi::u64_at(ent, 8);
            let payload_sz = (abi::u32_at(ent, 16) as usize).min(payload.len());
            let Some(h) = InHeader::parse(&hdr[..abi::IN_HEADER_LEN]) else {
                return Err(io::Error::other("short ring header"));
            };
            out.clear();
            let outcome = {
                let req = Req {
                    h,
                    op: &hdr[128..256],
                    rest: &payload[..payload_sz],
                };
                fs.handle(&req, &mut out)
            };
            // Every ring request is answered (FORGET and INTERRUPT never
            // come this way).
            let (err, len) = reply_parts(&outcome, &out).unwrap_or((-38, 0));
            payload[..len].copy_from_slice(&out[..len]);
            hdr[..abi::OUT_HEADER_LEN].copy_from_slice(&abi::out_header(
                abi::OUT_HEADER_LEN + len,
                err,
                h.unique,
            ));
            abi::put_u32(hdr, 256 + 16, u32::try_from(len).unwrap_or(0));
            q.commit(i, commit_id)?;
            served += 1;
        }
    }
}
