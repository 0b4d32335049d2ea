//! Snapshots of merged trees, so plyfs can be compared with the kernel's
//! overlayfs on everything a union decides.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a snapshot records of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obj {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub content: Option<Vec<u8>>,
    pub target: Option<OsString>,
    pub rdev: u64,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub ino: u64,
    pub mtime: (i64, i64),
}

/// A merged tree: relative path → object, and hard-link groups.
#[derive(Debug)]
pub struct Tree {
    pub objs: BTreeMap<PathBuf, Obj>,
}

pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chr"
    } else {
        "blk"
    }
}

/// Walks a tree (without following symlinks) and records everything the
/// union decides: names, types, modes, owners, sizes, contents, targets,
/// link counts, xattrs, inode numbers.
pub fn snapshot(root: &Path) -> Tree {
    let mut objs = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md =
            std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        let kind = kind_of(md.file_type());
        let mut xattrs = BTreeMap::new();
        if let Ok(names) = xattr::list(&p) {
            for n in names {
                if let Ok(Some(v)) = xattr::get(&p, &n) {
                    xattrs.insert(n, v);
                }
            }
        }
        let obj = Obj {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if kind == "dir" { 0 } else { md.size() },
            nlink: md.nlink(),
            content: (kind == "file")
                .then(|| std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))),
            target: (kind == "symlink").then(|| std::fs::read_link(&p).unwrap().into_os_string()),
            rdev: if kind == "chr" || kind == "blk" {
                md.rdev()
            } else {
                0
            },
            xattrs,
            ino: md.ino(),
            mtime: (md.mtime(), md.mtime_nsec()),
        };
        if kind == "dir" {
            let mut names: Vec<OsString> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                stack.push(rel.join(n));
            }
        }
        objs.insert(rel, obj);
    }
    Tree { objs }
}

/// Hard-link groups: sets of paths sharing an inode number (non-dirs).
pub fn link_groups(t: &Tree) -> BTreeSet<Vec<PathBuf>> {
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for (p, o) in &t.objs {
        if o.kind != "dir" {
            by_ino.entry(o.ino).or_default().push(p.clone());
        }
    }
    by_ino.into_values().collect()
}

/// What to compare besides the always-compared fields.
#[derive(Clone, Copy)]
pub struct Compare {
    /// Raw inode numbers (only meaningful over the very same layers).
    pub ino: bool,
    pub mtime: bool,
    /// Link counts of directories.
    pub dir_nlink: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            ino: false,
            mtime: false,
            dir_nlink: true,
        }
    }
}

/// Differences between two merged trees, as readable lines.
pub fn diff_trees(a: &Tree, b: &Tree, how: Compare) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&PathBuf> = a.objs.keys().chain(b.objs.keys()).collect();
    for k in keys {
        match (a.objs.get(k), b.objs.get(k)) {
            (Some(x), Some(y)) => {
                let mut x = x.clone();
                let mut y = y.clone();
                if !how.ino {
                    x.ino = 0;
                    y.ino = 0;
                }
                if !how.mtime {
                    x.mtime = (0, 0);
                    y.mtime = (0, 0);
                }
                if !how.dir_nlink && x.kind == "dir" {
                    x.nlink = 0;
                    y.nlink = 0;
                }
                if x != y {
                    out.push(format!(
                        "{}: {:?} != {:?}",
                        k.display(),
                        short(&x),
                        short(&y)
                    ));
                }
            }
            (Some(_), None) => out.push(format!("{}: only in the first tree", k.display())),
            (None, Some(_)) => out.push(format!("{}: only in the second tree", k.display())),
            (None, None) => {}
        }
    }
    let (ga, gb) = (link_groups(a), link_groups(b));
    if ga != gb {
        let only_a: Vec<_> = ga.difference(&gb).collect();
        let only_b: Vec<_> = gb.difference(&ga).collect();
        out.push(format!("hard-link groups differ: {only_a:?} vs {only_b:?}"));
    }
    out
}

fn short(o: &Obj) -> String {
    let content = o
        .content
        .as_ref()
        .map(|c| String::from_utf8_lossy(&c[..c.len().min(40)]).into_owned());
    format!(
        "{} {:o} {}:{} size={} nlink={} ino={} content={:?} target={:?} xattrs={:?} mtime={:?}",
        o.kind,
        o.mode,
        o.uid,
        o.gid,
        o.size,
        o.nlink,
        o.ino,
        content,
        o.target,
        o.xattrs.keys(),
        o.mtime
    )
}

pub fn assert_same_trees(a: &Tree, b: &Tree, how: Compare) {
    let d = diff_trees(a, b, how);
    assert!(d.is_empty(), "merged trees differ:\n{}", d.join("\n"));
}
