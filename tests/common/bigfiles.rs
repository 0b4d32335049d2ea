//! Large files for the crash soak: a lower file of generated content
//! (cheap to check at any offset, so nothing of it is kept in memory),
//! and the changes made to it, as a list of patches. One worker chmods
//! them (a metacopy copy-up, or a full one), appends to them and
//! overwrites blocks (a full copy-up first), and reads ranges back.

use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::lanes::Rng;

const PAGE: u64 = 4096;

#[derive(Clone, Debug)]
pub struct Big {
    k: usize,
    base: u64,
    patches: Vec<(u64, Vec<u8>)>,
    mode: u32,
    /// Changed since it was reset to its lower: copied up (or metacopied).
    pub copied: bool,
}

#[derive(Clone, Debug)]
pub enum BigOp {
    Chmod(usize, u32),
    Append(usize, Vec<u8>),
    Overwrite(usize, u64, Vec<u8>),
    Read(usize, u64, usize),
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Big {
    /// Big file `k` as its lower layer has it.
    pub fn lower(k: usize, size: u64) -> Big {
        Big {
            k,
            base: size,
            patches: Vec::new(),
            mode: 0o644,
            copied: false,
        }
    }

    pub fn len(&self) -> u64 {
        self.patches
            .iter()
            .map(|(o, d)| o + d.len() as u64)
            .fold(self.base, u64::max)
    }

    /// Bytes `off..off+len` as they must read.
    pub fn expected(&self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let base_end = self.base.min(off + len as u64);
        let mut i = off;
        while i < base_end {
            let word = splitmix(((self.k as u64) << 48) ^ (i / 8)).to_le_bytes();
            let start = (i % 8) as usize;
            let n = (8 - start).min((base_end - i) as usize);
            let at = (i - off) as usize;
            v[at..at + n].copy_from_slice(&word[start..start + n]);
            i += n as u64;
        }
        for (po, data) in &self.patches {
            let (a, b) = (
                *po.max(&off),
                (po + data.len() as u64).min(off + len as u64),
            );
            if a < b {
                v[(a - off) as usize..(b - off) as usize]
                    .copy_from_slice(&data[(a - po) as usize..(b - po) as usize]);
            }
        }
        v
    }

    /// Writes the lower file.
    pub fn write(&self, path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let mut f = std::fs::File::create(path).expect("create big file");
        let mut off = 0;
        while off < self.base {
            let n = (1u64 << 20).min(self.base - off);
            f.write_all(&self.expected(off, n as usize))
                .expect("write big file");
            off += n;
        }
    }

    /// Whether the file at `path` is this one (size, mode and every byte).
    pub fn verify(&self, path: &Path) -> Result<(), String> {
        let show = path.display();
        let md = std::fs::metadata(path).map_err(|e| format!("{show}: {e}"))?;
        if md.len() != self.len() || md.mode() & 0o7777 != self.mode {
            return Err(format!(
                "{show}: size {} mode {:o}, expected size {} mode {:o}",
                md.len(),
                md.mode() & 0o7777,
                self.len(),
                self.mode
            ));
        }
        let mut f = std::fs::File::open(path).map_err(|e| format!("{show}: {e}"))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| format!("{show}: {e}"))?;
            if n == 0 {
                break;
            }
            if buf[..n] != self.expected(off, n)[..] {
                let at = buf[..n]
                    .iter()
                    .zip(self.expected(off, n))
                    .position(|(a, b)| *a != b)
                    .unwrap_or(0);
                return Err(format!("{show}: differs at byte {}", off + at as u64));
            }
            off += n as u64;
        }
        Ok(())
    }

    /// The state after `op`.
    fn after(&self, op: &BigOp) -> Big {
        let mut b = self.clone();
        b.copied |= !matches!(op, BigOp::Read(..));
        match op {
            BigOp::Chmod(_, mode) => b.mode = *mode,
            BigOp::Append(_, data) => b.patches.push((self.len(), data.clone())),
            BigOp::Overwrite(_, off, data) => b.patches.push((*off, data.clone())),
            BigOp::Read(..) => {}
        }
        b
    }
}

fn choose(bigs: &[Big], rng: &mut Rng) -> BigOp {
    let k = rng.below(bigs.len() as u64) as usize;
    let len = bigs[k].len();
    match rng.below(10) {
        0..3 => BigOp::Chmod(
            k,
            *rng.pick(&[0o600, 0o640, 0o644, 0o444]).unwrap_or(&0o644),
        ),
        3..6 => {
            // Within the last page: a block reaches the upper whole or not.
            let room = PAGE - len % PAGE;
            let n = 1 + rng.below(room.min(256)) as usize;
            BigOp::Append(k, rng.bytes(n))
        }
        6..8 if len >= 256 => {
            let off = rng.below((len - 256) / 256 + 1) * 256;
            BigOp::Overwrite(k, off, rng.bytes(256))
        }
        _ => BigOp::Read(k, rng.below(len.max(1)), 4096),
    }
}

fn apply(root: &Path, bigs: &[Big], op: &BigOp) -> std::io::Result<()> {
    let p = |k: &usize| root.join(format!("big{k}"));
    match op {
        BigOp::Chmod(k, mode) => {
            std::fs::set_permissions(p(k), std::fs::Permissions::from_mode(*mode))
        }
        BigOp::Append(k, data) => {
            let mut f = std::fs::OpenOptions::new().append(true).open(p(k))?;
            f.write_all(data)?;
            f.sync_all()
        }
        BigOp::Overwrite(k, off, data) => {
            let f = std::fs::OpenOptions::new().write(true).open(p(k))?;
            f.write_all_at(data, *off)?;
            f.sync_all()
        }
        BigOp::Read(k, off, len) => {
            let f = std::fs::File::open(p(k))?;
            let want = bigs[*k].expected(*off, (*len as u64).min(bigs[*k].len() - off) as usize);
            let mut got = vec![0u8; want.len()];
            f.read_exact_at(&mut got, *off)?;
            if got != want {
                return Err(std::io::Error::other(format!(
                    "big{k}: a read at {off} returned other data"
                )));
            }
            Ok(())
        }
    }
}

/// What the big-file worker hands back: the files when the daemon died
/// and the states the operation in flight allows, or a failure before.
pub type BigResult = Result<(Vec<Big>, Option<(BigOp, Vec<Vec<Big>>)>, u64), String>;

/// Works on the big files under `root` until an operation fails after
/// `killed` is set (an earlier failure is a bug).
pub fn work(root: &Path, mut bigs: Vec<Big>, rng: &mut Rng, killed: &AtomicBool) -> BigResult {
    let mut ops = 0;
    loop {
        let op = choose(&bigs, rng);
        let k = match &op {
            BigOp::Chmod(k, _)
            | BigOp::Append(k, _)
            | BigOp::Overwrite(k, ..)
            | BigOp::Read(k, ..) => *k,
        };
        let mut after = bigs.clone();
        after[k] = bigs[k].after(&op);
        match apply(root, &bigs, &op) {
            Ok(()) => {
                bigs = after;
                ops += 1;
            }
            Err(_) if killed.load(Ordering::SeqCst) => {
                return Ok((bigs, Some((op, vec![after])), ops));
            }
            Err(e) => return Err(format!("big files: {op:?} failed: {e}")),
        }
    }
}

impl BigOp {
    /// The file it works on.
    pub fn file(&self) -> usize {
        match self {
            BigOp::Chmod(k, _)
            | BigOp::Append(k, _)
            | BigOp::Overwrite(k, ..)
            | BigOp::Read(k, ..) => *k,
        }
    }
}
