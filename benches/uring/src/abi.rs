//! The parts of the FUSE kernel ABI (include/uapi/linux/fuse.h) this
//! server speaks, as byte offsets: requests are read and replies written
//! field by field, little-endian, so no `unsafe` is needed.

pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const INIT: u32 = 26;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const CREATE: u32 = 35;
pub const INTERRUPT: u32 = 36;
pub const DESTROY: u32 = 38;
pub const BATCH_FORGET: u32 = 42;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;

// INIT flags (fuse_init_in/out.flags, and flags2 << 32).
pub const ASYNC_READ: u64 = 1 << 0;
pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
pub const BIG_WRITES: u64 = 1 << 5;
pub const DO_READDIRPLUS: u64 = 1 << 13;
pub const PARALLEL_DIROPS: u64 = 1 << 18;
pub const MAX_PAGES: u64 = 1 << 22;
pub const CACHE_SYMLINKS: u64 = 1 << 23;
pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
pub const INIT_EXT: u64 = 1 << 30;
pub const OVER_IO_URING: u64 = 1 << 41;

// fuse_setattr_in.valid
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// Size of the per-operation header (the kernel's first argument) for the
/// operations where it is not empty. Over /dev/fuse it comes right after
/// the in-header; over io_uring it is in `fuse_uring_req_header.op_in`.
pub fn op_header_len(opcode: u32) -> usize {
    match opcode {
        GETATTR | MKNOD | FSYNC | FSYNCDIR | CREATE | RENAME2 => 16,
        SETATTR => 88,
        MKDIR | RENAME | LINK | OPEN | OPENDIR | GETXATTR | LISTXATTR | SETXATTR | FORGET
        | BATCH_FORGET => 8,
        READ | READDIR | READDIRPLUS | WRITE => 40,
        RELEASE | RELEASEDIR | FLUSH => 24,
        INIT => 64,
        INTERRUPT => 8,
        _ => 0,
    }
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> Option<InHeader> {
        if b.len() < IN_HEADER_LEN {
            return None;
        }
        Some(InHeader {
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
            uid: u32_at(b, 24),
            gid: u32_at(b, 28),
        })
    }
}

/// `struct fuse_out_header`.
pub fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    put_u32(&mut h, 0, u32::try_from(len).unwrap_or(u32::MAX));
    h[4..8].copy_from_slice(&error.to_le_bytes());
    put_u64(&mut h, 8, unique);
    h
}

/// A request, whichever transport brought it: the in-header, the
/// per-operation header, and the rest (names, data).
pub struct Req<'a> {
    pub h: InHeader,
    pub op: &'a [u8],
    pub rest: &'a [u8],
}

impl Req<'_> {
    /// The `i`-th NUL-terminated string in the rest.
    pub fn name(&self, i: usize) -> &[u8] {
        self.rest.split(|&c| c == 0).nth(i).unwrap_or(&[])
    }
}

/// `struct fuse_attr` (88 bytes), from a stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    fn write(&self, out: &mut Vec<u8>) {
        let mut a = [0u8; 88];
        put_u64(&mut a, 0, self.ino);
        put_u64(&mut a, 8, self.size);
        put_u64(&mut a, 16, self.blocks);
        a[24..32].copy_from_slice(&self.atime.0.to_le_bytes());
        a[32..40].copy_from_slice(&self.mtime.0.to_le_bytes());
        a[40..48].copy_from_slice(&self.ctime.0.to_le_bytes());
        put_u32(&mut a, 48, self.atime.1);
        put_u32(&mut a, 52, self.mtime.1);
        put_u32(&mut a, 56, self.ctime.1);
        put_u32(&mut a, 60, self.mode);
        put_u32(&mut a, 64, self.nlink);
        put_u32(&mut a, 68, self.uid);
        put_u32(&mut a, 72, self.gid);
        put_u32(&mut a, 76, self.rdev);
        put_u32(&mut a, 80, self.blksize);
        out.extend_from_slice(&a);
    }
}

/// `struct fuse_entry_out` (128 bytes).
pub fn entry_out(out: &mut Vec<u8>, nodeid: u64, attr: &Attr, ttl: u64) {
    let mut e = [0u8; 40];
    put_u64(&mut e, 0, nodeid);
    put_u64(&mut e, 16, ttl);
    put_u64(&mut e, 24, ttl);
    out.extend_from_slice(&e);
    attr.write(out);
}

/// `struct fuse_attr_out` (104 bytes).
pub fn attr_out(out: &mut Vec<u8>, attr: &Attr, ttl: u64) {
    let mut e = [0u8; 16];
    put_u64(&mut e, 0, ttl);
    out.extend_from_slice(&e);
    attr.write(out);
}

/// `struct fuse_open_out` (16 bytes).
pub fn open_out(out: &mut Vec<u8>, fh: u64, open_flags: u32) {
    let mut e = [0u8; 16];
    put_u64(&mut e, 0, fh);
    put_u32(&mut e, 8, open_flags);
    out.extend_from_slice(&e);
}

/// `struct fuse_dirent` with its name, padded to 8 bytes; its size.
pub fn dirent_len(name: &[u8]) -> usize {
    (24 + name.len() + 7) & !7
}

pub fn dirent(out: &mut Vec<u8>, ino: u64, off: u64, typ: u32, name: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&ino.to_le_bytes());
    out.extend_from_slice(&off.to_le_bytes());
    out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&typ.to_le_bytes());
    out.extend_from_slice(name);
    out.resize(start + dirent_len(name), 0);
}
