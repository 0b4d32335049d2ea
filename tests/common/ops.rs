//! Syscall sequences run the same way on two mounts, with their results
//! compared: the differential machinery the write-path and conformance
//! tests share.

use std::ffi::OsStr;
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use plyfs_core::SetTime;
use plyfs_sys::fs as sys;

use super::{Compare, KernelMount, PlyfsMount, Scratch, Tree, diff_trees, snapshot};

/// One operation on a union, by paths relative to its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Create(String, u32),
    CreateTrunc(String),
    Write(String, u64, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Read(String),
    Mkdir(String, u32),
    Rmdir(String),
    Unlink(String),
    Rename(String, String, u32),
    Link(String, String),
    Symlink(String, String),
    Mkfifo(String),
    Chmod(String, u32),
    Chown(String, u32, u32),
    Utimens(String, i64, i64),
    SetXattr(String, String, Vec<u8>, i32),
    RemoveXattr(String, String),
    GetXattr(String, String),
    ListXattr(String),
    Stat(String),
    ReadDir(String),
    Readlink(String),
    /// Remembers the inode number of a path (in slot `usize`).
    RememberIno(String, usize),
    /// Whether a path still has the remembered inode number.
    SameIno(String, usize),
    /// Unmounts and mounts again (only a [`Twin`] runs it: on both sides).
    Remount,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

pub type Outcome = Result<String, i32>;

fn errno(e: plyfs_core::Errno) -> i32 {
    e.raw()
}

fn ioerr(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Runs one operation under the union root `root` (a descriptor of it).
pub fn apply(root: BorrowedFd<'_>, op: &Op, inos: &mut Vec<u64>) -> Outcome {
    let o = |p: &str| OsStr::new(p).to_os_string();
    // Non-blocking, so that opening a FIFO does not wait for a partner.
    let open = |p: &str, flags: i32, mode: u32| {
        sys::openat(root, &o(p), flags | libc::O_NONBLOCK, mode).map_err(errno)
    };
    match op {
        Op::Create(p, mode) => {
            open(p, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, *mode).map(|_| "ok".into())
        }
        Op::CreateTrunc(p) => {
            open(p, libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY, 0o644).map(|_| "ok".into())
        }
        Op::Write(p, off, data) => {
            let fd = open(p, libc::O_WRONLY, 0)?;
            sys::pwrite(fd.as_fd(), data, *off)
                .map(|n| n.to_string())
                .map_err(errno)
        }
        Op::Append(p, data) => {
            let fd = open(p, libc::O_WRONLY | libc::O_APPEND, 0)?;
            std::fs::File::from(fd)
                .write_all(data)
                .map(|_| "ok".into())
                .map_err(ioerr)
        }
        Op::Truncate(p, len) => {
            let fd = open(p, libc::O_WRONLY, 0)?;
            sys::ftruncate(fd.as_fd(), *len)
                .map(|_| "ok".into())
                .map_err(errno)
        }
        Op::Read(p) => {
            let fd = open(p, libc::O_RDONLY, 0)?;
            let mut v = Vec::new();
            std::fs::File::from(fd).read_to_end(&mut v).map_err(ioerr)?;
            Ok(summary(&v))
        }
        Op::Mkdir(p, mode) => sys::mkdirat(root, &o(p), *mode)
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Rmdir(p) => sys::unlinkat(root, &o(p), true)
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Unlink(p) => sys::unlinkat(root, &o(p), false)
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Rename(a, b, flags) => sys::renameat2(root, &o(a), root, &o(b), *flags)
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Link(a, b) => sys::linkat(root, &o(a), root, &o(b))
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Symlink(t, p) => sys::symlinkat(&o(t), root, &o(p))
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Mkfifo(p) => sys::mknodat(root, &o(p), libc::S_IFIFO | 0o644, 0)
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Chmod(p, mode) => sys::fchmodat(root, &o(p), *mode)
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Chown(p, u, g) => sys::fchownat(root, &o(p), *u, *g)
            .map(|_| "ok".into())
            .map_err(errno),
        Op::Utimens(p, a, m) => sys::utimensat(
            root,
            &o(p),
            SetTime::At { sec: *a, nsec: 0 },
            SetTime::At { sec: *m, nsec: 0 },
        )
        .map(|_| "ok".into())
        .map_err(errno),
        Op::SetXattr(p, n, v, flags) => plyfs_sys::xattr::set(root, &o(p), &o(n), v, *flags)
            .map(|_| "ok".into())
            .map_err(errno),
        Op::RemoveXattr(p, n) => plyfs_sys::xattr::remove(root, &o(p), &o(n))
            .map(|_| "ok".into())
            .map_err(errno),
        Op::GetXattr(p, n) => plyfs_sys::xattr::get_vec(root, &o(p), &o(n))
            .map_err(errno)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .ok_or(libc::ENODATA),
        Op::ListXattr(p) => {
            let l = plyfs_sys::xattr::list_vec(root, &o(p)).map_err(errno)?;
            let mut names: Vec<String> = plyfs_sys::xattr::split_names(&l)
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names.join(","))
        }
        Op::Stat(p) => {
            let st = sys::fstatat(root, &o(p)).map_err(errno)?;
            let kind = st.st_mode & libc::S_IFMT;
            let size = if kind == libc::S_IFDIR { 0 } else { st.st_size };
            Ok(format!(
                "mode={:o} size={size} nlink={} uid={} gid={} rdev={}",
                st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev
            ))
        }
        Op::ReadDir(p) => {
            let dir =
                sys::openat(root, &o(p), libc::O_PATH | libc::O_DIRECTORY, 0).map_err(errno)?;
            let mut names = sys::list_names(dir.as_fd()).map_err(errno)?;
            names.sort();
            Ok(names
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","))
        }
        Op::Readlink(p) => sys::readlinkat(root, &o(p))
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .map_err(errno),
        Op::RememberIno(p, slot) => {
            let st = sys::fstatat(root, &o(p)).map_err(errno)?;
            if inos.len() <= *slot {
                inos.resize(slot + 1, 0);
            }
            inos[*slot] = st.st_ino;
            Ok("remembered".into())
        }
        Op::SameIno(p, slot) => {
            let st = sys::fstatat(root, &o(p)).map_err(errno)?;
            Ok((inos.get(*slot) == Some(&st.st_ino)).to_string())
        }
        Op::Remount => panic!("Op::Remount needs both mounts: run it through a Twin"),
    }
}

/// File content as an outcome: itself when short, else its length, how
/// many of its bytes are zeros and a hash (a log stays readable).
fn summary(v: &[u8]) -> String {
    if v.len() <= 200 {
        return String::from_utf8_lossy(v).into_owned();
    }
    let fnv = v.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    let zeros = v.iter().filter(|b| **b == 0).count();
    format!("{} bytes ({zeros} zeros), fnv1a {fnv:016x}", v.len())
}

/// Two copies of a stack of lowers, one mounted by the kernel, one by plyfs.
pub struct Twin {
    pub scratch: Scratch,
    pub nlowers: usize,
    kernel: Option<KernelMount>,
    plyfs: Option<PlyfsMount>,
    /// The p side mounted by the kernel (see [`TwinConfig::p_starts_as_kernel`]).
    pkernel: Option<KernelMount>,
    p_is_kernel: bool,
    kroot: Option<OwnedFd>,
    proot: Option<OwnedFd>,
    kinos: Vec<u64>,
    pinos: Vec<u64>,
    pub log: Vec<String>,
    /// Extra -o options for plyfs.
    pub plyfs_opts: String,
    /// Options of the kernel's mounts (besides the layers).
    pub kernel_opts: String,
    /// What plyfs's daemons wrote to stderr, all of them.
    pub plyfs_stderr: String,
}

/// How a [`Twin`] mounts.
#[derive(Clone, Debug, Default)]
pub struct TwinConfig {
    pub nlowers: usize,
    /// Extra -o options for plyfs.
    pub plyfs_opts: String,
    /// Options of the kernel's mounts besides the layers.
    pub kernel_opts: String,
    /// The p side is mounted by the kernel too until [`Twin::handover`]:
    /// the kernel writes the upper that plyfs then takes over.
    pub p_starts_as_kernel: bool,
}

/// Layer i (0 = top) of copy `side`.
pub fn layer(s: &Scratch, side: &str, i: usize) -> PathBuf {
    s.path(&format!("{side}/l{i}"))
}

impl Twin {
    /// `build(dir, i)` fills lower i (0 = top); it runs once per side
    /// (cp -a cannot copy trees deeper than PATH_MAX).
    pub fn new(nlowers: usize, build: impl Fn(&Path, usize)) -> Twin {
        Self::with_opts(nlowers, "", build)
    }

    pub fn with_opts(nlowers: usize, plyfs_opts: &str, build: impl Fn(&Path, usize)) -> Twin {
        Self::configured(nlowers, plyfs_opts, false, build)
    }

    /// `user_ns`: layers use user.overlay.* markers, so the kernel mounts
    /// in userxattr mode (where it cannot make redirects).
    pub fn configured(
        nlowers: usize,
        plyfs_opts: &str,
        user_ns: bool,
        build: impl Fn(&Path, usize),
    ) -> Twin {
        let config = TwinConfig {
            nlowers,
            plyfs_opts: plyfs_opts.to_string(),
            kernel_opts: Self::kernel_opts_for(user_ns).to_string(),
            p_starts_as_kernel: false,
        };
        Self::with_config(config, |dir, i, _| build(dir, i))
    }

    /// The kernel's options for a stack in `trusted.overlay.*` or (user_ns)
    /// `user.overlay.*`.
    pub fn kernel_opts_for(user_ns: bool) -> &'static str {
        if user_ns {
            "userxattr,index=on"
        } else {
            "redirect_dir=on,index=on"
        }
    }

    /// `build(dir, i, side)` fills lower i (0 = top) of side "k" (the
    /// kernel's) or "p" (plyfs's).
    pub fn with_config(config: TwinConfig, build: impl Fn(&Path, usize, &str)) -> Twin {
        let scratch = Scratch::new();
        for side in ["k", "p"] {
            for i in 0..config.nlowers {
                let l = layer(&scratch, side, i);
                std::fs::create_dir_all(&l).unwrap();
                build(&l, i, side);
            }
            for d in ["upper", "work"] {
                std::fs::create_dir_all(scratch.path(&format!("{side}/{d}"))).unwrap();
            }
        }
        let mut t = Twin {
            scratch,
            nlowers: config.nlowers,
            kernel: None,
            plyfs: None,
            pkernel: None,
            p_is_kernel: config.p_starts_as_kernel,
            kroot: None,
            proot: None,
            kinos: Vec::new(),
            pinos: Vec::new(),
            log: Vec::new(),
            plyfs_opts: config.plyfs_opts,
            kernel_opts: config.kernel_opts,
            plyfs_stderr: String::new(),
        };
        t.mount();
        t
    }

    fn opts(&self, side: &str) -> String {
        let lowers: Vec<String> = (0..self.nlowers)
            .map(|i| layer(&self.scratch, side, i).display().to_string())
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.scratch.path(&format!("{side}/upper")).display(),
            self.scratch.path(&format!("{side}/work")).display()
        )
    }

    pub fn mount(&mut self) {
        let k = KernelMount::new(
            &format!("{},{}", self.opts("k"), self.kernel_opts),
            &self.scratch.path("kmnt"),
        );
        self.kroot = Some(sys::open_path(&k.mnt, libc::O_PATH | libc::O_DIRECTORY).unwrap());
        self.kernel = Some(k);
        let pmnt = self.scratch.path("pmnt");
        if self.p_is_kernel {
            let p = KernelMount::new(&format!("{},{}", self.opts("p"), self.kernel_opts), &pmnt);
            self.pkernel = Some(p);
        } else {
            let mut popts = self.opts("p");
            if !self.plyfs_opts.is_empty() {
                popts = format!("{popts},{}", self.plyfs_opts);
            }
            self.plyfs = Some(PlyfsMount::new(&popts, &pmnt));
        }
        self.proot = Some(sys::open_path(&pmnt, libc::O_PATH | libc::O_DIRECTORY).unwrap());
    }

    pub fn unmount(&mut self) {
        self.kroot = None;
        self.proot = None;
        self.kernel = None;
        self.pkernel = None;
        if let Some(p) = self.plyfs.take() {
            let err = p.unmount();
            self.plyfs_stderr.push_str(&err);
            assert!(!err.contains("panicked"), "plyfs panicked:\n{err}");
        }
    }

    /// Unmounts both sides and mounts them again.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// Whether the p side is (still) the kernel's.
    pub fn p_is_kernel(&self) -> bool {
        self.p_is_kernel
    }

    /// The p side changes hands: the kernel unmounts it, plyfs mounts the
    /// same layers, upper and work directory. The k side remounts too.
    pub fn handover(&mut self) {
        self.unmount();
        self.p_is_kernel = false;
        self.mount();
    }

    pub fn kmnt(&self) -> PathBuf {
        self.scratch.path("kmnt")
    }

    pub fn pmnt(&self) -> PathBuf {
        self.scratch.path("pmnt")
    }

    /// Runs `op` on both and returns both outcomes.
    pub fn both(&mut self, op: &Op) -> (Outcome, Outcome) {
        if *op == Op::Remount {
            self.remount();
            self.log.push(format!("{op}"));
            return (Ok("remounted".into()), Ok("remounted".into()));
        }
        let k = apply(self.kroot.as_ref().unwrap().as_fd(), op, &mut self.kinos);
        let p = apply(self.proot.as_ref().unwrap().as_fd(), op, &mut self.pinos);
        self.log.push(format!("{op}  => kernel {k:?}, plyfs {p:?}"));
        (k, p)
    }

    /// Runs `op` on plyfs only (for deliberate differences).
    pub fn plyfs_only(&mut self, op: &Op) -> Outcome {
        apply(self.proot.as_ref().unwrap().as_fd(), op, &mut self.pinos)
    }

    /// Runs `op` on both and asserts the same outcome; returns it.
    pub fn outcome(&mut self, op: Op) -> Outcome {
        let (k, p) = self.both(&op);
        assert_eq!(
            k,
            p,
            "different outcomes for {op}\nsequence so far:\n{}",
            self.log.join("\n")
        );
        k
    }

    pub fn run(&mut self, op: Op) {
        let _ = self.outcome(op);
    }

    pub fn run_all(&mut self, ops: &[Op]) {
        for op in ops {
            self.run(op.clone());
        }
    }

    /// The merged trees now, compared (without inode numbers and times).
    pub fn tree_diff(&self) -> Vec<String> {
        self.tree_diff_with(Compare::default())
    }

    pub fn tree_diff_with(&self, how: Compare) -> Vec<String> {
        diff_trees(&snapshot(&self.kmnt()), &snapshot(&self.pmnt()), how)
    }

    pub fn assert_same_tree(&self) {
        let d = self.tree_diff();
        assert!(
            d.is_empty(),
            "trees differ:\n{}\nsequence:\n{}",
            d.join("\n"),
            self.log.join("\n")
        );
    }

    /// Unmounts both, then mounts the kernel over plyfs's upper and work
    /// directory (its index included) with the same lowers: it must show
    /// the tree plyfs showed. Remounts both after.
    pub fn assert_kernel_reads_plyfs_upper(&mut self) {
        if let Err(e) = self.check_kernel_reads_plyfs_upper() {
            panic!("{e}\nsequence:\n{}", self.log.join("\n"));
        }
    }

    pub fn check_kernel_reads_plyfs_upper(&mut self) -> Result<(), String> {
        let before = snapshot(&self.pmnt());
        self.unmount();
        let r = self.kernel_reads_plyfs_upper(&before);
        self.mount();
        r
    }

    /// With both sides unmounted: the kernel mounted over plyfs's upper and
    /// work directory shows `before`, and plyfs left none of its private
    /// attributes there.
    pub fn kernel_reads_plyfs_upper(&self, before: &Tree) -> Result<(), String> {
        for (p, names) in walk_xattrs(&self.scratch.path("p/upper")) {
            if names.iter().any(|n| n.contains("plyfs")) {
                return Err(format!(
                    "plyfs-private xattrs on {}: {names:?}",
                    p.display()
                ));
            }
        }
        let opts = format!("{},{}", self.opts("p"), self.kernel_opts);
        let k = KernelMount::new(&opts, &self.scratch.path("kcheck"));
        let d = diff_trees(before, &snapshot(&k.mnt), Compare::default());
        if d.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the kernel reads plyfs's upper differently:\n{}",
                d.join("\n")
            ))
        }
    }

    /// The other way round: plyfs mounted over the kernel's upper and work
    /// directory (redirects, origins and index as the kernel wrote them)
    /// shows the kernel's tree.
    pub fn check_plyfs_reads_kernel_upper(&mut self) -> Result<(), String> {
        let before = snapshot(&self.kmnt());
        self.unmount();
        let r = self.plyfs_reads_kernel_upper(&before);
        self.mount();
        r
    }

    /// With both sides unmounted: plyfs mounted over the kernel's upper and
    /// work directory shows `before`.
    pub fn plyfs_reads_kernel_upper(&self, before: &Tree) -> Result<(), String> {
        let mut opts = self.opts("k");
        if !self.plyfs_opts.is_empty() {
            opts = format!("{opts},{}", self.plyfs_opts);
        }
        let p = PlyfsMount::new(&opts, &self.scratch.path("pcheck"));
        let d = diff_trees(before, &snapshot(&p.mnt), Compare::default());
        if d.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "plyfs reads the kernel's upper differently:\n{}",
                d.join("\n")
            ))
        }
    }

    /// Moves a directory on the kernel's mount the way mv(1) does when
    /// rename(2) says EXDEV: copy, then delete. False when the kernel will
    /// not delete the source (a directory holding an xattr whiteout, which
    /// it hides from readdir yet counts for rmdir): then the kernel cannot
    /// be brought to plyfs's state at all.
    pub fn emulate_move_on_kernel(&mut self, op: &Op) -> bool {
        let Op::Rename(a, b, flags) = op else {
            return true;
        };
        let m = self.kmnt();
        let sh = |script: &str| {
            std::process::Command::new("sh")
                .args(["-c", script])
                .status()
                .unwrap()
                .success()
        };
        // `cp -a` into a setgid directory leaves the copied directories
        // setgid, which a rename would not: give them their source's mode.
        let copy = |from: &Path, to: &Path| {
            let script = format!("cp -a '{}' '{}'", from.display(), to.display());
            assert!(
                sh(&script),
                "emulating {op} on the kernel's mount: {script}"
            );
            fix_dir_modes(from, to);
        };
        let rm = |p: &Path| sh(&format!("rm -rf '{}' 2>/dev/null", p.display()));
        let (pa, pb) = (m.join(a), m.join(b));
        let done = if *flags & libc::RENAME_EXCHANGE != 0 {
            let tmp = m.join(".xchg");
            copy(&pa, &tmp);
            rm(&pa) && {
                copy(&pb, &pa);
                rm(&pb) && {
                    copy(&tmp, &pb);
                    rm(&tmp)
                }
            }
        } else {
            sh(&format!(
                "rmdir '{0}' 2>/dev/null || rm -f '{0}'; true",
                pb.display()
            ));
            copy(&pa, &pb);
            rm(&pa)
        };
        self.log.push(format!(
            "  (emulated {op} on the kernel's mount by copy and delete{})",
            if done {
                ""
            } else {
                ": the kernel refused a delete"
            }
        ));
        done
    }

    /// Checks the inode number of `path` is stable in plyfs across
    /// an unmount and a remount.
    pub fn plyfs_ino(&self, path: &str) -> u64 {
        std::fs::symlink_metadata(self.pmnt().join(path))
            .map(|m| m.ino())
            .unwrap_or(0)
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        self.kroot = None;
        self.proot = None;
        self.kernel = None;
        self.pkernel = None;
        self.plyfs = None;
    }
}

/// Every path under `root` with its xattr names.
pub fn walk_xattrs(root: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let names: Vec<String> = xattr::list(&p)
            .map(|l| l.map(|n| n.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        out.push((p.clone(), names));
        if std::fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// Gives every directory under `to` the mode of the same directory under
/// `from` (a copy of it).
fn fix_dir_modes(from: &Path, to: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(from) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777));
    if let Ok(entries) = std::fs::read_dir(from) {
        for e in entries.flatten() {
            fix_dir_modes(&e.path(), &to.join(e.file_name()));
        }
    }
}
