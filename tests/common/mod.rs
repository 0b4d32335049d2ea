//! Shared machinery of the end-to-end tests: building layers, mounting
//! plyfs and the kernel's overlayfs (the oracle) with guards that always
//! unmount, and snapshots of merged trees to compare.

#![allow(dead_code)]

pub mod ops;
pub mod random;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PLYFS: &str = env!("CARGO_BIN_EXE_plyfs");

/// End-to-end tests need root and /dev/fuse. Without them a developer run
/// says so and skips; under CI=true it fails, loudly.
pub fn require_mount_privileges() -> bool {
    let root = euid() == 0;
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if root && fuse {
        return true;
    }
    let why = format!(
        "end-to-end tests need root and /dev/fuse (root: {root}, /dev/fuse usable: {fuse})"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI must provide both");
    }
    eprintln!("SKIPPED: {why}");
    false
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// A scratch directory for one test, removed at the end.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        // Under /var/tmp: the same (disk) filesystem as other layers, with
        // xattrs and file handles.
        let dir = tempfile::Builder::new()
            .prefix("plyfs-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        Scratch { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

/// Builds the content of one layer directory.
pub struct LayerBuilder {
    pub root: PathBuf,
}

impl LayerBuilder {
    pub fn new(root: impl Into<PathBuf>) -> LayerBuilder {
        let root = root.into();
        std::fs::create_dir_all(&root).expect("layer dir");
        LayerBuilder { root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("parent dirs");
        }
        p
    }

    pub fn file(&self, rel: &str, content: &str) -> &Self {
        std::fs::write(self.p(rel), content).expect("write");
        self
    }

    pub fn file_mode(&self, rel: &str, content: &str, mode: u32) -> &Self {
        let p = self.p(rel);
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    pub fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.p(rel)).expect("mkdir");
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.p(rel)).expect("symlink");
        self
    }

    pub fn hardlink(&self, existing: &str, rel: &str) -> &Self {
        std::fs::hard_link(self.root.join(existing), self.p(rel)).expect("link");
        self
    }

    /// Kernel-format whiteout: a 0/0 character device.
    pub fn whiteout(&self, rel: &str) -> &Self {
        mknod(&self.p(rel), libc::S_IFCHR, 0);
        self
    }

    pub fn fifo(&self, rel: &str) -> &Self {
        mknod(&self.p(rel), libc::S_IFIFO | 0o644, 0);
        self
    }

    pub fn xattr(&self, rel: &str, name: &str, value: &[u8]) -> &Self {
        xattr::set(self.root.join(rel), name, value).expect("setxattr");
        self
    }

    /// Kernel-format opaque directory.
    pub fn opaque(&self, rel: &str) -> &Self {
        self.dir(rel).xattr(rel, "trusted.overlay.opaque", b"y")
    }

    /// OCI whiteout `.wh.NAME`.
    pub fn oci_whiteout(&self, rel: &str) -> &Self {
        let p = Path::new(rel);
        let name = format!(".wh.{}", p.file_name().unwrap().to_string_lossy());
        let target = p
            .parent()
            .map(|d| d.join(&name))
            .unwrap_or_else(|| PathBuf::from(&name));
        self.file(target.to_str().unwrap(), "")
    }

    /// OCI opaque directory.
    pub fn oci_opaque(&self, rel: &str) -> &Self {
        self.dir(rel).file(&format!("{rel}/.wh..wh..opq"), "")
    }
}

pub fn mknod(p: &Path, mode: u32, dev: u64) {
    use std::os::fd::AsFd;
    let parent =
        plyfs_sys::fs::open_path(p.parent().unwrap(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
    plyfs_sys::fs::mknodat(parent.as_fd(), p.file_name().unwrap(), mode, dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
}

/// Whether `mp` is a mount point right now.
/// Appends `data` to the file at `p` (open O_APPEND, write, close).
pub fn append(p: &Path, data: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("append to {}: {e}", p.display()));
}

pub fn is_mounted(mp: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mp.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A plyfs mount; dropping it unmounts (lazily as a last resort) and waits
/// for the daemon.
pub struct PlyfsMount {
    pub mnt: PathBuf,
    child: Option<Child>,
}

impl PlyfsMount {
    /// Mounts in the foreground as a child process, so the test owns it.
    pub fn new(opts: &str, mnt: &Path) -> PlyfsMount {
        Self::try_new(opts, mnt).unwrap_or_else(|e| panic!("plyfs mount failed: {e}"))
    }

    pub fn try_new(opts: &str, mnt: &Path) -> Result<PlyfsMount, String> {
        std::fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
        // PLYFS_TEST_DEBUG=1 logs every request of the test's mounts.
        let debug = std::env::var_os("PLYFS_TEST_DEBUG").is_some();
        let mut child = Command::new(PLYFS)
            .args(if debug {
                &["-d", "-o"][..]
            } else {
                &["-f", "-o"][..]
            })
            .arg(opts)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let up = wait_until(Duration::from_secs(20), || {
            is_mounted(mnt) || child.try_wait().ok().flatten().is_some()
        });
        if !up || !is_mounted(mnt) {
            let _ = child.kill();
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(PlyfsMount {
            mnt: mnt.to_path_buf(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Unmounts and returns the daemon's stderr.
    pub fn unmount(mut self) -> String {
        self.take_down()
    }

    fn take_down(&mut self) -> String {
        unmount(&self.mnt);
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        if !wait_until(Duration::from_secs(10), || {
            child.try_wait().ok().flatten().is_some()
        }) {
            let _ = child.kill();
        }
        child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PlyfsMount {
    fn drop(&mut self) {
        let err = self.take_down();
        if std::env::var_os("PLYFS_TEST_DEBUG").is_some() {
            eprintln!("--- plyfs log for {} ---\n{err}", self.mnt.display());
        }
    }
}

/// A kernel overlayfs mount; dropping it unmounts.
pub struct KernelMount {
    pub mnt: PathBuf,
}

impl KernelMount {
    pub fn new(opts: &str, mnt: &Path) -> KernelMount {
        std::fs::create_dir_all(mnt).expect("mnt dir");
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", opts])
            .arg(mnt)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "kernel overlay mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        KernelMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// Unmounts `mnt`, also on failure. Tests run in parallel threads, and a
/// process another thread is starting holds copies of this thread's
/// descriptors until it execs, which can make a mount busy for a moment:
/// retry before detaching it lazily.
fn unmount(mnt: &Path) {
    for _ in 0..20 {
        if !is_mounted(mnt) {
            return;
        }
        let ok = Command::new("umount")
            .arg(mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("umount").arg("-l").arg(mnt).status();
}

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

/// Runs the plyfs binary and returns (exit code, stdout, stderr).
pub fn plyfs(args: &[&OsStr]) -> (i32, String, String) {
    let out = Command::new(PLYFS).args(args).output().expect("run plyfs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lowerdir=a:b:...` for layer paths, top first.
pub fn lowerdir(layers: &[&Path]) -> String {
    let v: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", v.join(":"))
}
