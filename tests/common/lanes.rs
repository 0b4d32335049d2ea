//! Lanes: directory trees that one worker each changes through a mount,
//! one operation at a time, while a model records what the tree must be.
//! When the daemon is killed mid-operation, the tree must afterwards be
//! the model before that operation or after it (or, for an operation of
//! several steps, one of the named states in between): never anything
//! else. Every operation that writes data ends with an fsync, so that a
//! completed one must survive whatever the data path.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A small, seedable generator (xorshift64*), so that a failing round
/// can be replayed from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len() as u64) as usize])
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b'a' + self.below(26) as u8).collect()
    }
}

/// Data moves in blocks that never straddle a page: a block written
/// through the writeback cache reaches the upper whole or not at all.
pub const BLOCK: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ent {
    Dir(u32),
    /// A regular file, by identity: hard links share one.
    File(u64),
    Link(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileData {
    pub content: Vec<u8>,
    pub mode: u32,
}

/// What a lane's tree must be: names (relative to the lane) and files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub names: BTreeMap<String, Ent>,
    pub files: BTreeMap<u64, FileData>,
}

/// One operation of a worker.
#[derive(Clone, Debug)]
pub enum Op {
    Create(String, Vec<u8>),
    Append(String, Vec<u8>),
    Overwrite(String, u64, Vec<u8>),
    Chmod(String, u32),
    Truncate(String, u64),
    Rename(String, String),
    Unlink(String),
    Link(String, String),
    Mkdir(String),
    Rmdir(String),
    Symlink(String, String),
}

/// What an operation in flight may have left: the model before it, after
/// it, and states in between.
#[derive(Clone, Debug)]
pub struct Pending {
    pub op: Op,
    pub states: Vec<Model>,
}

impl Model {
    fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.names.keys().filter(move |k| {
            Path::new(k.as_str())
                .parent()
                .is_some_and(|p| p == Path::new(dir))
        })
    }

    fn dirs(&self) -> Vec<String> {
        let mut v = vec![String::new()];
        v.extend(
            self.names
                .iter()
                .filter(|(_, e)| matches!(e, Ent::Dir(_)))
                .map(|(k, _)| k.clone()),
        );
        v
    }

    fn of_kind(&self, f: impl Fn(&Ent) -> bool) -> Vec<String> {
        self.names
            .iter()
            .filter(|(_, e)| f(e))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn file(&mut self, path: &str) -> &mut FileData {
        let Some(Ent::File(id)) = self.names.get(path) else {
            panic!("model: {path} is no file")
        };
        let id = *id;
        self.files.get_mut(&id).expect("model: file data")
    }

    /// Drops the data of files no name is left for.
    fn gc(&mut self) {
        let live: std::collections::BTreeSet<u64> = self
            .names
            .values()
            .filter_map(|e| match e {
                Ent::File(id) => Some(*id),
                _ => None,
            })
            .collect();
        self.files.retain(|id, _| live.contains(id));
    }

    /// The states `op` may leave, from this one: after it first, then the
    /// ones in between.
    pub fn plan(&self, op: &Op, next_id: &mut u64) -> Vec<Model> {
        let mut after = self.clone();
        let mut between = Vec::new();
        match op {
            Op::Create(p, data) => {
                *next_id += 1;
                after.names.insert(p.clone(), Ent::File(*next_id));
                let mut empty = after.clone();
                empty.files.insert(
                    *next_id,
                    FileData {
                        content: Vec::new(),
                        mode: 0o644,
                    },
                );
                between.push(empty);
                after.files.insert(
                    *next_id,
                    FileData {
                        content: data.clone(),
                        mode: 0o644,
                    },
                );
            }
            Op::Append(p, data) => after.file(p).content.extend_from_slice(data),
            Op::Overwrite(p, off, data) => {
                let c = &mut after.file(p).content;
                let off = *off as usize;
                c[off..off + data.len()].copy_from_slice(data);
            }
            Op::Chmod(p, mode) => match after.names.get_mut(p) {
                Some(Ent::Dir(m)) => *m = *mode,
                _ => after.file(p).mode = *mode,
            },
            Op::Truncate(p, len) => after.file(p).content.truncate(*len as usize),
            Op::Rename(a, b) => {
                // Two names of one file: rename does nothing.
                if self.names.get(a) != self.names.get(b)
                    || !matches!(self.names.get(a), Some(Ent::File(_)))
                {
                    let moved: Vec<(String, Ent)> = self
                        .names
                        .iter()
                        .filter(|(k, _)| *k == a || k.starts_with(&format!("{a}/")))
                        .map(|(k, e)| (k.clone(), e.clone()))
                        .collect();
                    for (k, _) in &moved {
                        after.names.remove(k);
                    }
                    for (k, e) in moved {
                        after.names.insert(format!("{b}{}", &k[a.len()..]), e);
                    }
                    after.gc();
                }
            }
            Op::Unlink(p) | Op::Rmdir(p) => {
                after.names.remove(p);
                after.gc();
            }
            Op::Link(a, b) => {
                let e = self.names[a].clone();
                after.names.insert(b.clone(), e);
            }
            Op::Mkdir(p) => {
                after.names.insert(p.clone(), Ent::Dir(0o755));
            }
            Op::Symlink(p, t) => {
                after.names.insert(p.clone(), Ent::Link(t.clone()));
            }
        }
        let mut states = vec![after];
        states.extend(between);
        states
    }

    /// A random operation that is valid on this model; `grow`: new names
    /// may be made.
    pub fn choose(&self, rng: &mut Rng, fresh: &mut u64, grow: bool) -> Op {
        let files = self.of_kind(|e| matches!(e, Ent::File(_)));
        let nondirs = self.of_kind(|e| !matches!(e, Ent::Dir(_)));
        let dirs = self.dirs();
        let mut new_name = |rng: &mut Rng| {
            *fresh += 1;
            let dir = rng.pick(&dirs).cloned().unwrap_or_default();
            join(&dir, &format!("n{fresh}"))
        };
        loop {
            let op = match rng.below(100) {
                0..15 if grow => Op::Create(new_name(rng), rng.bytes(BLOCK)),
                15..30 => match rng.pick(&files) {
                    Some(f) => Op::Append(f.clone(), rng.bytes(BLOCK)),
                    None => continue,
                },
                30..40 => match rng.pick(&files) {
                    Some(f) => {
                        let len = self.clone().file(f).content.len() / BLOCK;
                        if len == 0 {
                            continue;
                        }
                        let off = rng.below(len as u64) * BLOCK as u64;
                        Op::Overwrite(f.clone(), off, rng.bytes(BLOCK))
                    }
                    None => continue,
                },
                40..50 => {
                    let modes = [0o600, 0o640, 0o644, 0o700, 0o755, 0o444];
                    let mode = *rng.pick(&modes).unwrap_or(&0o644);
                    match rng.pick(&files) {
                        Some(f) => Op::Chmod(f.clone(), mode),
                        None => continue,
                    }
                }
                50..55 => match rng.pick(&files) {
                    Some(f) => {
                        let blocks = self.clone().file(f).content.len() / BLOCK;
                        Op::Truncate(f.clone(), rng.below(blocks as u64 + 1) * BLOCK as u64)
                    }
                    None => continue,
                },
                55..65 => {
                    let Some(a) = rng.pick(&nondirs).cloned() else {
                        continue;
                    };
                    // Over another non-directory now and then.
                    let b = match rng.pick(&nondirs) {
                        Some(b) if rng.below(3) == 0 && *b != a => b.clone(),
                        _ => new_name(rng),
                    };
                    Op::Rename(a, b)
                }
                65..75 => match rng.pick(&nondirs) {
                    Some(f) => Op::Unlink(f.clone()),
                    None => continue,
                },
                75..80 if grow => match rng.pick(&files) {
                    Some(f) => Op::Link(f.clone(), new_name(rng)),
                    None => continue,
                },
                80..85 if grow => Op::Mkdir(new_name(rng)),
                85..90 => {
                    let empty: Vec<&String> = dirs
                        .iter()
                        .filter(|d| !d.is_empty() && self.children(d).next().is_none())
                        .collect();
                    match rng.pick(&empty) {
                        Some(d) => Op::Rmdir((*d).clone()),
                        None => continue,
                    }
                }
                90..95 => {
                    let Some(d) = rng.pick(&dirs[1..]).cloned() else {
                        continue;
                    };
                    let to = new_name(rng);
                    if to.starts_with(&format!("{d}/")) {
                        continue;
                    }
                    Op::Rename(d, to)
                }
                95..100 if grow => Op::Symlink(new_name(rng), format!("t{}", rng.below(1000))),
                _ => continue,
            };
            return op;
        }
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Carries out `op` in the lane at `root`.
pub fn apply(root: &Path, op: &Op) -> std::io::Result<()> {
    let p = |s: &str| root.join(s);
    match op {
        Op::Create(f, data) => {
            let mut h = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(p(f))?;
            h.write_all(data)?;
            h.sync_all()
        }
        Op::Append(f, data) => {
            let mut h = std::fs::OpenOptions::new().append(true).open(p(f))?;
            h.write_all(data)?;
            h.sync_all()
        }
        Op::Overwrite(f, off, data) => {
            let h = std::fs::OpenOptions::new().write(true).open(p(f))?;
            h.write_all_at(data, *off)?;
            h.sync_all()
        }
        Op::Chmod(f, mode) => {
            std::fs::set_permissions(p(f), std::fs::Permissions::from_mode(*mode))
        }
        Op::Truncate(f, len) => {
            let h = std::fs::OpenOptions::new().write(true).open(p(f))?;
            h.set_len(*len)?;
            h.sync_all()
        }
        Op::Rename(a, b) => std::fs::rename(p(a), p(b)),
        Op::Unlink(f) => std::fs::remove_file(p(f)),
        Op::Link(a, b) => std::fs::hard_link(p(a), p(b)),
        Op::Mkdir(d) => std::fs::DirBuilder::new().mode(0o755).create(p(d)),
        Op::Rmdir(d) => std::fs::remove_dir(p(d)),
        Op::Symlink(l, t) => std::os::unix::fs::symlink(t, p(l)),
    }
}

/// One object as read through the mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Dir(u32),
    File {
        mode: u32,
        content: Vec<u8>,
        ino: u64,
        nlink: u64,
    },
    Link(String),
}

/// Reads a lane's tree through the mount.
pub fn observe(root: &Path) -> std::io::Result<BTreeMap<String, Seen>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let md = std::fs::symlink_metadata(root.join(&r))?;
            let key = r.to_string_lossy().into_owned();
            let seen = if md.is_dir() {
                stack.push(r.clone());
                Seen::Dir(md.mode() & 0o7777)
            } else if md.file_type().is_symlink() {
                Seen::Link(
                    std::fs::read_link(root.join(&r))?
                        .to_string_lossy()
                        .into_owned(),
                )
            } else {
                Seen::File {
                    mode: md.mode() & 0o7777,
                    content: std::fs::read(root.join(&r))?,
                    ino: md.ino(),
                    nlink: md.nlink(),
                }
            };
            out.insert(key, seen);
        }
    }
    Ok(out)
}

impl Model {
    /// The model of a tree as first seen (names sharing an inode number
    /// share a file).
    pub fn from_seen(seen: &BTreeMap<String, Seen>, next_id: &mut u64) -> Model {
        let mut m = Model::default();
        let mut by_ino: HashMap<u64, u64> = HashMap::new();
        for (k, s) in seen {
            let e = match s {
                Seen::Dir(mode) => Ent::Dir(*mode),
                Seen::Link(t) => Ent::Link(t.clone()),
                Seen::File {
                    mode, content, ino, ..
                } => {
                    let id = *by_ino.entry(*ino).or_insert_with(|| {
                        *next_id += 1;
                        *next_id
                    });
                    m.files.insert(
                        id,
                        FileData {
                            content: content.clone(),
                            mode: *mode,
                        },
                    );
                    Ent::File(id)
                }
            };
            m.names.insert(k.clone(), e);
        }
        m
    }

    /// Why `seen` is not this model (`None`: it is). `inos`: the inode
    /// number each file had when last seen, which must not change (copy-up,
    /// rename and remount keep it); updated with what is seen.
    pub fn mismatch(
        &self,
        seen: &BTreeMap<String, Seen>,
        inos: &HashMap<u64, u64>,
    ) -> Option<String> {
        let mut why = Vec::new();
        for k in self.names.keys().filter(|k| !seen.contains_key(*k)) {
            why.push(format!("{k}: missing"));
        }
        for k in seen.keys().filter(|k| !self.names.contains_key(*k)) {
            why.push(format!("{k}: not expected"));
        }
        let mut ino_of: HashMap<u64, u64> = HashMap::new();
        for (k, e) in &self.names {
            let Some(s) = seen.get(k) else { continue };
            match (e, s) {
                (Ent::Dir(m), Seen::Dir(n)) if m == n => {}
                (Ent::Link(t), Seen::Link(u)) if t == u => {}
                (
                    Ent::File(id),
                    Seen::File {
                        mode,
                        content,
                        ino,
                        nlink,
                    },
                ) => {
                    let d = &self.files[id];
                    if d.mode != *mode {
                        why.push(format!("{k}: mode {mode:o}, expected {:o}", d.mode));
                    }
                    if d.content != *content {
                        why.push(format!(
                            "{k}: {} bytes {:?}..., expected {} bytes {:?}...",
                            content.len(),
                            String::from_utf8_lossy(&content[..content.len().min(16)]),
                            d.content.len(),
                            String::from_utf8_lossy(&d.content[..d.content.len().min(16)])
                        ));
                    }
                    let names = self
                        .names
                        .values()
                        .filter(|x| **x == Ent::File(*id))
                        .count();
                    if *nlink != names as u64 {
                        why.push(format!("{k}: {nlink} links, expected {names}"));
                    }
                    match ino_of.insert(*id, *ino) {
                        Some(other) if other != *ino => {
                            why.push(format!("{k}: inode {ino}, its hard link has {other}"))
                        }
                        _ => {}
                    }
                    if let Some(old) = inos.get(id)
                        && old != ino
                    {
                        why.push(format!("{k}: inode number {ino}, was {old}"));
                    }
                }
                (e, s) => why.push(format!("{k}: {s:?}, expected {e:?}")),
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The inode numbers of this model's files in `seen` (which matches).
    pub fn inos(&self, seen: &BTreeMap<String, Seen>) -> HashMap<u64, u64> {
        self.names
            .iter()
            .filter_map(|(k, e)| match (e, seen.get(k)) {
                (Ent::File(id), Some(Seen::File { ino, .. })) => Some((*id, *ino)),
                _ => None,
            })
            .collect()
    }
}
