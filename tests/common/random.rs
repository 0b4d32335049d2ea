//! Random layer stacks and operation sequences for the differential
//! tester, and the runner that compares plyfs with the kernel's overlayfs
//! on them. A failure prints a reproducer that compiles as a test.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use proptest::prelude::*;

use super::ops::{Op, Outcome, Twin, TwinConfig, walk_xattrs};
use super::{Compare, LayerBuilder, Tree, diff_trees, oci_to_kernel_format, snapshot};

/// How a case is mounted and what its stacks hold. Every mode compares
/// plyfs with the kernel's overlayfs, remounts both in the middle of a
/// sequence (`Op::Remount`) and at its end, and has each read the other's
/// upper at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Kernel-format stacks (char and xattr whiteouts, `opaque=y`/`x`),
    /// plyfs with its default options.
    Default,
    /// plyfs with `passthrough=0`: the kernel's writeback cache.
    Writeback,
    /// Stacks mixing every format in one stack: char whiteouts, xattr
    /// whiteouts, OCI `.wh.NAME` and `.wh..wh..opq`. The kernel, which
    /// reads no OCI markers, mounts the same stack converted to its format;
    /// at the end plyfs mounts the converted stack too and must see no
    /// change.
    Formats,
    /// Both sides with metacopy: the kernel with
    /// `metacopy=on,redirect_dir=on,index=on`, plyfs with
    /// [`plyfs_metacopy_option`]; chown/chmod/utimens are frequent.
    Metacopy,
    /// The kernel (metacopy on) writes plyfs's upper: the p side is the
    /// kernel's until the first remount, where plyfs (default options)
    /// takes over its layers, upper and work directory, and goes on.
    KernelUpper,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Default,
        Mode::Writeback,
        Mode::Formats,
        Mode::Metacopy,
        Mode::KernelUpper,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Default => "default",
            Mode::Writeback => "writeback",
            Mode::Formats => "formats",
            Mode::Metacopy => "metacopy",
            Mode::KernelUpper => "kernel-upper",
        }
    }

    fn oci(self) -> bool {
        self == Mode::Formats
    }

    /// The kernel refuses metacopy with userxattr.
    fn user_ns_weight(self) -> f64 {
        match self {
            Mode::Metacopy | Mode::KernelUpper => 0.0,
            _ => 0.2,
        }
    }

    fn metacopy(self) -> bool {
        matches!(self, Mode::Metacopy | Mode::KernelUpper)
    }

    pub fn kernel_opts(self, user_ns: bool) -> String {
        if self.metacopy() {
            "metacopy=on,redirect_dir=on,index=on".into()
        } else {
            Twin::kernel_opts_for(user_ns).into()
        }
    }

    pub fn plyfs_opts(self, user_ns: bool) -> String {
        let mode = match self {
            Mode::Writeback => "passthrough=0".to_string(),
            Mode::Metacopy => plyfs_metacopy_option(),
            _ => String::new(),
        };
        [if user_ns { "userxattr" } else { "" }, &mode]
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// plyfs's option in [`Mode::Metacopy`]: `metacopy=on`, or
/// PLYFS_CONFORMANCE_PLYFS_METACOPY's value (empty: plyfs copies up whole
/// files, against the kernel's metacopy).
pub fn plyfs_metacopy_option() -> String {
    std::env::var("PLYFS_CONFORMANCE_PLYFS_METACOPY").unwrap_or_else(|_| "metacopy=on".into())
}

/// Top-level names; `e` never exists in generated layers.
pub const TOP: [&str; 5] = ["a", "b", "c", "d", "e"];
/// Names inside directories.
pub const SUB: [&str; 3] = ["x", "y", "z"];

/// What one path is in one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// Content 0..=3 is a line, 4 is [`BIG`] bytes of noise.
    File {
        content: u8,
        mode: u32,
        xattr: bool,
    },
    Dir {
        mode: u32,
    },
    /// A directory marked opaque (`overlay.opaque=y`).
    OpaqueDir,
    /// A directory marked `overlay.opaque=x`, holding xattr whiteouts.
    XDir,
    SymlinkTo {
        target: u8,
    },
    Whiteout,
    /// An empty file with `overlay.whiteout` (only inside an XDir).
    XWhiteout,
    /// A hard link to the top-level file `TOP[to]` of the same layer.
    Hardlink {
        to: usize,
    },
    Fifo,
    /// An OCI whiteout: an empty file `.wh.NAME`.
    OciWhiteout,
    /// A directory holding OCI's opaque marker `.wh..wh..opq`.
    OciOpaqueDir,
}

/// The size of a big file.
pub const BIG: usize = 100_000;

/// The content of a file spec at `path`.
pub fn content_of(content: u8, path: &str) -> Vec<u8> {
    if content < 4 {
        return format!("content {content} of {path}\n").into_bytes();
    }
    // xorshift64, seeded by the path: the same noise on both sides.
    let mut x = path.bytes().fold(0x9e3779b97f4a7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }) | 1;
    (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Layers, top first; each a list of (path, spec), parents before children.
#[derive(Clone, Debug)]
pub struct Stack {
    /// Markers in `user.overlay.*` (and both mounts in userxattr mode).
    pub user_ns: bool,
    pub lowers: Vec<Vec<(String, Spec)>>,
    /// An upper layer that starts non-empty.
    pub upper: Vec<(String, Spec)>,
}

const TARGETS: [&str; 4] = ["a", "../b", "/etc/hostname", "nowhere"];

/// `oci`: OCI whiteouts too.
fn leaf(in_dir: bool, oci: bool) -> impl Strategy<Value = Spec> {
    prop_oneof![
        12 => (0u8..9, prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o444]), any::<bool>())
            .prop_map(|(content, mode, xattr)| Spec::File { content: content / 2, mode, xattr }),
        4 => (0u8..4).prop_map(|target| Spec::SymlinkTo { target }),
        6 => Just(Spec::Whiteout),
        2 => Just(Spec::Fifo),
        4 => (0usize..4).prop_map(|to| Spec::Hardlink { to }),
        4 => Just(if in_dir { Spec::XWhiteout } else { Spec::Whiteout }),
        if oci { 10 } else { 0 } => Just(Spec::OciWhiteout),
    ]
}

fn dir_spec(oci: bool) -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => prop::sample::select(vec![0o755u32, 0o700, 0o555]).prop_map(|mode| Spec::Dir { mode }),
        2 => Just(Spec::OpaqueDir),
        1 => Just(Spec::XDir),
        if oci { 2 } else { 0 } => Just(Spec::OciOpaqueDir),
    ]
}

/// One layer: for each top-level name nothing, a leaf, or a directory
/// with leaves. A name `dirish` in a stack is mostly a directory in its
/// layers, or deleted: directories deleted and made again, as image layers
/// have them.
fn layer(oci: bool, dirish: [bool; 4]) -> impl Strategy<Value = Vec<(String, Spec)>> {
    type Top = Option<(Spec, Vec<Option<Spec>>)>;
    let dir = move || {
        (
            dir_spec(oci),
            prop::collection::vec(prop::option::weighted(0.5, leaf(true, oci)), 3),
        )
            .prop_map(|(d, kids)| Some((d, kids)))
    };
    let top: Vec<BoxedStrategy<Top>> = dirish
        .iter()
        .map(|&d| {
            if d {
                prop_oneof![
                    1 => Just(None),
                    1 => leaf(false, oci).prop_map(|l| Some((l, Vec::new()))),
                    1 => Just(Some((Spec::Whiteout, Vec::new()))),
                    if oci { 1 } else { 0 } => Just(Some((Spec::OciWhiteout, Vec::new()))),
                    5 => dir(),
                ]
                .boxed()
            } else {
                prop_oneof![
                    3 => Just(None),
                    3 => leaf(false, oci).prop_map(|l| Some((l, Vec::new()))),
                    3 => dir(),
                ]
                .boxed()
            }
        })
        .collect();
    top.prop_map(|tops| {
        let mut out = Vec::new();
        for (i, t) in tops.into_iter().enumerate() {
            let Some((spec, kids)) = t else { continue };
            let is_x = spec == Spec::XDir;
            let is_dir = is_dir_spec(&spec);
            out.push((TOP[i].to_string(), spec));
            if is_dir {
                for (j, k) in kids.into_iter().enumerate() {
                    if let Some(mut k) = k {
                        if k == Spec::XWhiteout && !is_x {
                            k = Spec::Whiteout;
                        }
                        out.push((format!("{}/{}", TOP[i], SUB[j]), k));
                    }
                }
            }
        }
        out
    })
}

/// A stack in the kernel's formats ([`Mode::Default`]).
pub fn stack() -> impl Strategy<Value = Stack> {
    stack_in(Mode::Default)
}

pub fn stack_in(mode: Mode) -> impl Strategy<Value = Stack> {
    let oci = mode.oci();
    prop::array::uniform4(any::<bool>())
        .prop_flat_map(move |dirish| {
            (
                prop::bool::weighted(mode.user_ns_weight()),
                // Mixed formats want layers to mix them in.
                prop::collection::vec(layer(oci, dirish), if oci { 2..=5 } else { 1..=4 }),
                prop::option::weighted(0.2, layer(oci, dirish)),
            )
        })
        .prop_map(|(user_ns, lowers, upper)| {
            let mut s = Stack {
                user_ns,
                lowers,
                upper: upper.unwrap_or_default(),
            };
            normalize(&mut s);
            s
        })
}

/// Makes a stack one the kernel reads consistently (and the tester can
/// compare): generated stacks, and stacks a failing case is made smaller
/// to ([`minimize`]).
fn normalize(s: &mut Stack) {
    // The bottom layer has nothing to hide: xattr whiteouts there read
    // differently in the kernel's lookup and readdir.
    if let Some(bottom) = s.lowers.last_mut() {
        for (_, spec) in bottom.iter_mut() {
            if *spec == Spec::XWhiteout {
                *spec = Spec::Whiteout;
            }
        }
    }
    // Xattr whiteouts are a lower-layer format; an upper's "x" directory
    // is not honoured by the kernel.
    for (_, spec) in s.upper.iter_mut() {
        match spec {
            Spec::XWhiteout => *spec = Spec::Whiteout,
            Spec::XDir => *spec = Spec::Dir { mode: 0o755 },
            _ => {}
        }
    }
    drop_unmerged_whiteouts(s);
    if s.user_ns {
        // Directories there move by copying on the kernel's side (see
        // deliberate_difference), which breaks hard links that reach
        // outside them: keep hard links out of the picture.
        for layer in s.lowers.iter_mut().chain(std::iter::once(&mut s.upper)) {
            for (_, spec) in layer.iter_mut() {
                if let Spec::Hardlink { .. } = spec {
                    *spec = Spec::File {
                        content: 0,
                        mode: 0o644,
                        xattr: false,
                    };
                }
            }
        }
    }
}

fn is_dir_spec(s: &Spec) -> bool {
    matches!(
        s,
        Spec::Dir { .. } | Spec::OpaqueDir | Spec::XDir | Spec::OciOpaqueDir
    )
}

fn is_whiteout_spec(s: &Spec) -> bool {
    matches!(s, Spec::Whiteout | Spec::XWhiteout | Spec::OciWhiteout)
}

/// Whiteouts only make sense in a directory with another directory of the
/// same name below it. The kernel reads any other directory as it is,
/// listing the whiteouts its lookup hides; it never writes such layers, so
/// they are not generated.
fn drop_unmerged_whiteouts(s: &mut Stack) {
    // Layers top first, the upper in front.
    let mut all: Vec<Vec<(String, Spec)>> = vec![s.upper.clone()];
    all.extend(s.lowers.iter().cloned());
    let merged = |i: usize, dir: &str, all: &[Vec<(String, Spec)>]| -> bool {
        let here = all[i]
            .iter()
            .find(|(p, _)| p == dir)
            .map(|(_, s)| s.clone());
        if !matches!(here, Some(Spec::Dir { .. }) | Some(Spec::XDir)) {
            return false;
        }
        for layer in &all[i + 1..] {
            if let Some((_, spec)) = layer.iter().find(|(p, _)| p == dir) {
                return is_dir_spec(spec);
            }
        }
        false
    };
    let mut out = all.clone();
    for (i, layer) in all.iter().enumerate() {
        out[i].retain(|(p, spec)| {
            let Some((dir, _)) = p.split_once('/') else {
                return true;
            };
            !is_whiteout_spec(spec) || merged(i, dir, &all)
        });
        let _ = layer;
    }
    s.upper = out.remove(0);
    s.lowers = out;
}

/// Writes one layer.
pub fn materialize(dir: &Path, layer: &[(String, Spec)], user_ns: bool) {
    let l = LayerBuilder::new(dir);
    let ns = if user_ns {
        "user.overlay."
    } else {
        "trusted.overlay."
    };
    // Hard links after the files they link to.
    let (links, rest): (Vec<_>, Vec<_>) = layer
        .iter()
        .partition(|(_, s)| matches!(s, Spec::Hardlink { .. }));
    for (path, spec) in rest.into_iter().chain(links) {
        match spec {
            Spec::File {
                content,
                mode,
                xattr,
            } => {
                let p = dir.join(path);
                std::fs::write(&p, content_of(*content, path)).expect("write");
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                    .expect("chmod");
                if *xattr {
                    l.xattr(path, "user.k", format!("v{content}").as_bytes());
                }
            }
            Spec::Dir { .. } | Spec::OpaqueDir | Spec::XDir | Spec::OciOpaqueDir => {
                l.dir(path);
                match spec {
                    Spec::OpaqueDir => {
                        l.xattr(path, &format!("{ns}opaque"), b"y");
                    }
                    Spec::XDir => {
                        l.xattr(path, &format!("{ns}opaque"), b"x");
                    }
                    Spec::OciOpaqueDir => {
                        l.oci_opaque(path);
                    }
                    _ => {}
                }
            }
            Spec::OciWhiteout => {
                l.oci_whiteout(path);
            }
            Spec::SymlinkTo { target } => {
                l.symlink(path, TARGETS[*target as usize % TARGETS.len()]);
            }
            Spec::Whiteout => {
                l.whiteout(path);
            }
            Spec::XWhiteout => {
                l.file(path, "");
                l.xattr(path, &format!("{ns}whiteout"), b"");
            }
            Spec::Hardlink { to } => {
                let target = TOP[*to];
                let is_file = layer
                    .iter()
                    .any(|(p, s)| p == target && matches!(s, Spec::File { .. }));
                if is_file && target != path {
                    l.hardlink(target, path);
                } else {
                    l.file(path, "not a link\n");
                }
            }
            Spec::Fifo => {
                l.fifo(path);
            }
        }
    }
    // Directory modes last: a 0555 directory must still get its entries.
    for (path, spec) in layer {
        if let Spec::Dir { mode } = spec {
            std::fs::set_permissions(
                dir.join(path),
                std::os::unix::fs::PermissionsExt::from_mode(*mode),
            )
            .unwrap();
        }
    }
}

fn paths() -> Vec<String> {
    let mut v: Vec<String> = TOP.iter().map(|t| t.to_string()).collect();
    for t in TOP {
        for s in SUB {
            v.push(format!("{t}/{s}"));
        }
    }
    v
}

fn path() -> impl Strategy<Value = String> {
    prop::sample::select(paths())
}

/// A top-level name generated layers may hold.
fn top_path() -> impl Strategy<Value = String> {
    prop::sample::select(TOP[..4].iter().map(|t| t.to_string()).collect::<Vec<_>>())
}

fn dir_path() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just(".".to_string()), 3 => prop::sample::select(TOP.iter().map(|t| t.to_string()).collect::<Vec<_>>())]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"1".to_vec(),
        b"hello".to_vec(),
        b"more data\n".to_vec(),
    ])
}

fn mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o700, 0o4755, 0o2755, 0o1777])
}

/// One operation; `links` says whether hard links may be made.
pub fn op(links: bool) -> impl Strategy<Value = Op> {
    op_weighted(links, 1)
}

/// Offsets of writes and lengths of truncations: inside a small file, and
/// inside and past a big one.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..12,
        1 => prop::sample::select(vec![4096u64, 65_536, BIG as u64 - 3, BIG as u64 + 5]),
    ]
}

/// `metadata` multiplies the weights of chmod, chown and utimens (the
/// changes a metacopy copy-up is made for).
fn op_weighted(links: bool, metadata: u32) -> impl Strategy<Value = Op> {
    let flags = prop::sample::select(vec![
        0u32,
        0,
        0,
        libc::RENAME_NOREPLACE,
        libc::RENAME_EXCHANGE,
    ]);
    let xname = prop::sample::select(vec!["user.k".to_string(), "user.j".to_string()]);
    prop_oneof![
        3 => (path(), mode()).prop_map(|(p, m)| Op::Create(p, m & 0o777)),
        1 => path().prop_map(Op::CreateTrunc),
        2 => (path(), offset(), data()).prop_map(|(p, o, d)| Op::Write(p, o, d)),
        2 => (path(), data()).prop_map(|(p, d)| Op::Append(p, d)),
        1 => (path(), offset()).prop_map(|(p, l)| Op::Truncate(p, l)),
        2 => path().prop_map(Op::Read),
        3 => (path(), mode()).prop_map(|(p, m)| Op::Mkdir(p, m)),
        3 => path().prop_map(Op::Rmdir),
        4 => path().prop_map(Op::Unlink),
        // Half of the renames move a top-level name: the directories.
        6 => (prop_oneof![path(), top_path()], path(), flags).prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        2 => (path(), path()).prop_map(move |(a, b)| if links { Op::Link(a, b) } else { Op::Stat(a) }),
        1 => (prop::sample::select(TARGETS.iter().map(|t| t.to_string()).collect::<Vec<_>>()), path())
            .prop_map(|(t, p)| Op::Symlink(t, p)),
        1 => path().prop_map(Op::Mkfifo),
        2 * metadata => (path(), mode()).prop_map(|(p, m)| Op::Chmod(p, m)),
        metadata => (path(), prop::sample::select(vec![0u32, 1000, 1234]), prop::sample::select(vec![0u32, 1000]))
            .prop_map(|(p, u, g)| Op::Chown(p, u, g)),
        metadata => (path(), 0i64..3, 0i64..3).prop_map(|(p, a, m)| Op::Utimens(p, 1_000_000 + a, 2_000_000 + m)),
        2 => (path(), xname.clone(), data(), prop::sample::select(vec![0, libc::XATTR_CREATE, libc::XATTR_REPLACE]))
            .prop_map(|(p, n, v, f)| Op::SetXattr(p, n, v, f)),
        1 => (path(), xname.clone()).prop_map(|(p, n)| Op::RemoveXattr(p, n)),
        1 => (path(), xname).prop_map(|(p, n)| Op::GetXattr(p, n)),
        1 => path().prop_map(Op::ListXattr),
        3 => path().prop_map(Op::Stat),
        3 => dir_path().prop_map(Op::ReadDir),
        1 => path().prop_map(Op::Readlink),
        1 => (path(), 0usize..2).prop_map(|(p, i)| Op::RememberIno(p, i)),
        1 => (path(), 0usize..2).prop_map(|(p, i)| Op::SameIno(p, i)),
    ]
}

/// One operation of a differential sequence: [`op`]'s, and now and then
/// a remount of both sides.
pub fn twin_op(mode: Mode, links: bool) -> impl Strategy<Value = Op> {
    let metadata = if mode.metacopy() { 3 } else { 1 };
    prop_oneof![
        30 => op_weighted(links, metadata),
        1 => Just(Op::Remount),
    ]
}

/// A stack with a sequence of operations for it ([`Mode::Default`]).
pub fn case() -> impl Strategy<Value = (Stack, Vec<Op>)> {
    case_in(Mode::Default)
}

/// A stack with a sequence of operations for it. In
/// [`Mode::KernelUpper`] the sequence has a remount in its middle (the
/// handover), so plyfs goes on from an upper the kernel wrote.
pub fn case_in(mode: Mode) -> impl Strategy<Value = (Stack, Vec<Op>)> {
    stack_in(mode).prop_flat_map(move |s| {
        let links = !s.user_ns;
        let ops = if mode == Mode::KernelUpper {
            (
                prop::collection::vec(twin_op(mode, links), 1..13),
                prop::collection::vec(twin_op(mode, links), 0..13),
            )
                .prop_map(|(mut a, b)| {
                    a.push(Op::Remount);
                    a.extend(b);
                    a
                })
                .boxed()
        } else {
            prop::collection::vec(twin_op(mode, links), 1..25).boxed()
        };
        (Just(s), ops)
    })
}

/// The one place that names where plyfs deliberately differs from the
/// kernel, two cases:
///
/// 1. In userxattr mode the kernel cannot create redirects, so it fails a
///    rename of a directory with lower content with EXDEV, where plyfs
///    moves it (its rootless uppers carry user.overlay.redirect). The
///    kernel's side then moves it as mv(1) does.
/// 2. A change to a lower hard link through an operation that names no
///    path (open for writing, chmod, utimens...) copies it into the index;
///    the kernel also copies up the directory of the name it came by,
///    which it knows and FUSE does not tell. That directory becomes merged
///    there and reports a link count of 1: only that count differs.
fn deliberate_difference(stack: &Stack, op: &Op, kernel: &Outcome, plyfs: &Outcome) -> bool {
    stack.user_ns
        && matches!(op, Op::Rename(..))
        && *kernel == Err(libc::EXDEV)
        && *plyfs != Err(libc::EXDEV)
}

/// Case 2 above, for a directory at `path`: the kernel's copy-up made it
/// merged (link count 1) where plyfs left it in the lower.
fn dir_copied_up_by_kernel_only(t: &Twin, path: &str, kernel_nlink: u64) -> bool {
    let rel = path.trim_start_matches("./");
    let up = |side: &str| t.scratch.path(&format!("{side}/upper")).join(rel);
    kernel_nlink == 1 && up("k").is_dir() && !up("p").exists()
}

fn nlink_of(o: &Outcome) -> Option<u64> {
    o.as_ref()
        .ok()?
        .split(' ')
        .find_map(|f| f.strip_prefix("nlink="))
        .and_then(|n| n.parse().ok())
}

/// A directory moved by copying on the kernel's side is a plain directory
/// there and a merged one (link count 1) in plyfs: only the counts differ.
fn dir_nlink_only(k: &Outcome, p: &Outcome) -> bool {
    let strip = |o: &Outcome| {
        o.as_ref()
            .ok()
            .filter(|s| s.starts_with("mode=40"))
            .map(|s| {
                s.split(' ')
                    .filter(|f| !f.starts_with("nlink="))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
    };
    strip(k).is_some() && strip(k) == strip(p)
}

/// What a case did besides passing, for the summary of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Remounts in the middle of the sequence.
    pub remounts: usize,
    /// The stack held OCI markers.
    pub oci: bool,
    /// Files with `overlay.metacopy` in the kernel's upper at the end.
    pub kernel_metacopy: bool,
    /// ... in plyfs's upper (in [`Mode::KernelUpper`]: also the kernel's
    /// own, written before the handover).
    pub plyfs_metacopy: bool,
    /// plyfs warned that it does not know an option it was given.
    pub plyfs_unsupported_option: bool,
    /// The kernel's own view changed across a remount (then plyfs's may
    /// change there too).
    pub kernel_changed_by_remount: bool,
}

fn has_oci(stack: &Stack) -> bool {
    stack
        .lowers
        .iter()
        .chain(std::iter::once(&stack.upper))
        .flatten()
        .any(|(_, s)| matches!(s, Spec::OciWhiteout | Spec::OciOpaqueDir))
}

fn ns(user_ns: bool) -> &'static str {
    if user_ns {
        "user.overlay"
    } else {
        "trusted.overlay"
    }
}

fn has_xattr(dir: &Path, suffix: &str) -> bool {
    walk_xattrs(dir)
        .iter()
        .any(|(_, n)| n.iter().any(|n| n.ends_with(suffix)))
}

/// Runs one case of the default mode; on a difference returns the report.
pub fn run_case(stack: &Stack, ops: &[Op]) -> Result<Stats, String> {
    run_case_in(Mode::Default, stack, ops)
}

/// Runs one case; on a difference returns the report.
pub fn run_case_in(mode: Mode, stack: &Stack, ops: &[Op]) -> Result<Stats, String> {
    let mut stats = Stats::default();
    run_case_counting(mode, stack, ops, &mut stats).map(|()| stats)
}

/// [`run_case_in`], counting what the case did in `stats` (also when it
/// fails).
fn run_case_counting(
    mode: Mode,
    stack: &Stack,
    ops: &[Op],
    stats: &mut Stats,
) -> Result<(), String> {
    let user_ns = stack.user_ns;
    let config = TwinConfig {
        nlowers: stack.lowers.len(),
        plyfs_opts: mode.plyfs_opts(user_ns),
        kernel_opts: mode.kernel_opts(user_ns),
        p_starts_as_kernel: mode == Mode::KernelUpper,
    };
    // Whatever the kernel mounts is in its format.
    let kernel_side = |side: &str| side == "k" || config.p_starts_as_kernel;
    let mut t = Twin::with_config(config.clone(), |dir, i, side| {
        materialize(dir, &stack.lowers[i], user_ns);
        if kernel_side(side) {
            oci_to_kernel_format(dir, ns(user_ns));
        }
    });
    if !stack.upper.is_empty() {
        t.unmount();
        for side in ["k", "p"] {
            let upper = t.scratch.path(&format!("{side}/upper"));
            materialize(&upper, &stack.upper, user_ns);
            if kernel_side(side) {
                oci_to_kernel_format(&upper, ns(user_ns));
            }
        }
        t.mount();
    }
    let report = |t: &Twin, what: String, upto: usize| {
        Err(format!(
            "{what}\n\n{}\n\nlog:\n{}",
            reproducer(mode, stack, &ops[..upto]),
            t.log.join("\n")
        ))
    };
    stats.oci = has_oci(stack);
    let mut emulated = false;
    for (i, op) in ops.iter().enumerate() {
        if *op == Op::Remount {
            stats.remounts += 1;
            t.log.push(format!("{op}"));
            if let Err(e) = remount_checked(&mut t, user_ns, emulated, stats) {
                return report(&t, e, i + 1);
            }
            continue;
        }
        let (k, p) = t.both(op);
        if k == p || (emulated && dir_nlink_only(&k, &p)) {
            continue;
        }
        if let Op::Stat(path) = op
            && dir_nlink_only(&k, &p)
            && nlink_of(&k).is_some_and(|n| dir_copied_up_by_kernel_only(&t, path, n))
        {
            continue;
        }
        if deliberate_difference(stack, op, &k, &p) {
            if p.is_ok() {
                if !t.emulate_move_on_kernel(op) {
                    // Nothing left to compare against: the case ends here.
                    return Ok(());
                }
                emulated = true;
            }
            continue;
        }
        return report(
            &t,
            format!("different outcomes for {op}: kernel {k:?}, plyfs {p:?}"),
            i + 1,
        );
    }
    stats.kernel_metacopy = has_xattr(&t.scratch.path("k/upper"), "overlay.metacopy");
    stats.plyfs_metacopy = has_xattr(&t.scratch.path("p/upper"), "overlay.metacopy");
    // The final views compared, and again after both remount (in
    // KernelUpper mode without a remount in the sequence, plyfs takes over
    // the kernel's upper here).
    t.log.push("(remount at the end)".into());
    let (ktree, mut ptree) = match remount_checked(&mut t, user_ns, emulated, stats) {
        Ok(trees) => trees,
        Err(e) => return report(&t, e, ops.len()),
    };
    // plyfs reads the stack converted to the kernel's format as it read
    // the OCI one (the kernel needs that format to read plyfs's upper).
    if stats.oci && !config.p_starts_as_kernel {
        t.unmount();
        oci_to_kernel_format(&t.scratch.path("p/upper"), ns(user_ns));
        for i in 0..stack.lowers.len() {
            oci_to_kernel_format(&super::ops::layer(&t.scratch, "p", i), ns(user_ns));
        }
        t.mount();
        let converted = snapshot(&t.pmnt());
        // Converting changes directories' times.
        let how = Compare {
            ino: true,
            ..Compare::default()
        };
        let d = diff_trees(&ptree, &converted, how);
        if !d.is_empty() {
            return report(
                &t,
                format!(
                    "plyfs reads the stack converted to the kernel's format differently \
                     (first the OCI one, then the converted one):\n{}",
                    d.join("\n")
                ),
                ops.len(),
            );
        }
        ptree = converted;
    }
    t.unmount();
    stats.plyfs_unsupported_option = t.plyfs_stderr.contains("unsupported option");
    // The kernel reads back what plyfs wrote (in userxattr mode only
    // without redirects, which that mode refuses to follow)...
    let redirects = has_xattr(&t.scratch.path("p/upper"), "overlay.redirect");
    if !(user_ns && redirects)
        && let Err(e) = t.kernel_reads_plyfs_upper(&ptree)
    {
        return report(&t, e, ops.len());
    }
    // ... and plyfs reads back what the kernel wrote.
    if let Err(e) = t.plyfs_reads_kernel_upper(&ktree) {
        return report(&t, e, ops.len());
    }
    Ok(())
}

/// The views of the two mounts compared: everything but times and inode
/// numbers; directory link counts only where neither side has a reason
/// to differ (see [`deliberate_difference`]).
fn compare_views(t: &Twin, ktree: &Tree, ptree: &Tree, emulated: bool) -> Vec<String> {
    let mut d = diff_trees(
        ktree,
        ptree,
        Compare {
            dir_nlink: false,
            ..Compare::default()
        },
    );
    if !emulated {
        for (path, ko) in &ktree.objs {
            if let Some(po) = ptree.objs.get(path)
                && ko.kind == "dir"
                && po.kind == "dir"
                && ko.nlink != po.nlink
                && !dir_copied_up_by_kernel_only(t, &path.to_string_lossy(), ko.nlink)
            {
                d.push(format!(
                    "{}: directory link count {} (kernel) != {} (plyfs)",
                    path.display(),
                    ko.nlink,
                    po.nlink
                ));
            }
        }
    }
    d
}

/// Unmounts and mounts both sides (on a p side still the kernel's,
/// plyfs takes over: [`Twin::handover`]). Before and after, plyfs's view
/// must be the kernel's; and each view must be what it was, inode numbers
/// and times included: on plyfs's side everywhere the kernel's view kept
/// them.
fn remount_checked(
    t: &mut Twin,
    user_ns: bool,
    emulated: bool,
    stats: &mut Stats,
) -> Result<(Tree, Tree), String> {
    let (kb, pb) = (snapshot(&t.kmnt()), snapshot(&t.pmnt()));
    let d = compare_views(t, &kb, &pb, emulated);
    if !d.is_empty() {
        return Err(format!("views differ before a remount:\n{}", d.join("\n")));
    }
    let handover = t.p_is_kernel();
    if handover {
        t.handover();
    } else {
        t.remount();
    }
    let (ka, pa) = (snapshot(&t.kmnt()), snapshot(&t.pmnt()));
    let all = Compare {
        ino: true,
        mtime: true,
        dir_nlink: true,
    };
    // Lines of diff_trees begin with the path (or name link groups).
    let key = |l: &str| l.split(": ").next().unwrap_or_default().to_string();
    let kernel_changed: BTreeSet<String> =
        diff_trees(&kb, &ka, all).iter().map(|l| key(l)).collect();
    stats.kernel_changed_by_remount |= !kernel_changed.is_empty();
    if !kernel_changed.is_empty() {
        // (A lower symlink copied up shows its origin's inode number, and
        // its own after a remount.)
        t.log.push(format!(
            "  (the kernel's own view changed across the remount: {kernel_changed:?})"
        ));
    }
    let mut pb = pb;
    for (path, b) in pb.objs.iter_mut() {
        let Some(a) = pa.objs.get(path) else { continue };
        // The kernel reports its root by the upper's inode number, plyfs
        // by the lower's: compare the root without it.
        let root = handover && path.as_os_str().is_empty();
        // Where markers are user.* attributes, a copy of a lower symlink
        // or special file cannot record its origin: the kernel's copy too
        // shows its own inode number after a remount.
        let special = user_ns && !matches!(b.kind, "file" | "dir");
        if root || special {
            b.ino = a.ino;
        }
    }
    let d: Vec<String> = diff_trees(&pb, &pa, all)
        .into_iter()
        .filter(|l| !kernel_changed.contains(&key(l)))
        .collect();
    if !d.is_empty() {
        return Err(format!(
            "{} changed across the remount (before != after):\n{}",
            if handover {
                "the view of the kernel's upper, taken over by plyfs,"
            } else {
                "plyfs's view"
            },
            d.join("\n")
        ));
    }
    let d = compare_views(t, &ka, &pa, emulated);
    if !d.is_empty() {
        return Err(format!("views differ after a remount:\n{}", d.join("\n")));
    }
    Ok((ka, pa))
}

/// [`run_case_in`] with a panic (a failed mount, a dead daemon) turned
/// into a report; what the case did also when it failed.
pub fn try_case(mode: Mode, stack: &Stack, ops: &[Op]) -> (Stats, Result<(), String>) {
    let mut stats = Stats::default();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_case_counting(mode, stack, ops, &mut stats)
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(format!(
            "panicked: {}\n\n{}",
            msg.unwrap_or_default(),
            reproducer(mode, stack, ops)
        ))
    });
    (stats, r)
}

/// What kind of failure a report is, to tell failures apart: its first
/// line without the operation's arguments, and whether the differences
/// are in names or in objects.
pub fn signature(report: &str) -> String {
    let mut lines = report.lines();
    let first = lines.next().unwrap_or_default();
    let first = match first.strip_prefix("different outcomes for ") {
        Some(rest) => {
            let variant = rest.split('(').next().unwrap_or_default();
            let outcomes = rest.rsplit_once("): ").map_or("", |(_, o)| o);
            // Errnos tell kinds apart, successful results' texts do not.
            let shape = |o: &str| {
                if o.starts_with("Ok") {
                    "Ok".to_string()
                } else {
                    o.to_string()
                }
            };
            let (k, p) = outcomes.split_once(", plyfs ").unwrap_or((outcomes, ""));
            format!(
                "different outcomes for {variant}: kernel {}, plyfs {}",
                shape(k.trim_start_matches("kernel ")),
                shape(p)
            )
        }
        // Found before, at or after a remount: the same difference.
        None if first.starts_with("views differ") || first.starts_with("final trees differ") => {
            "views differ:".to_string()
        }
        None => first.chars().take(100).collect(),
    };
    let second = lines.next().unwrap_or_default();
    let how = if second.contains("only in the first") {
        " (missing on plyfs's side)"
    } else if second.contains("only in the second") {
        " (extra on plyfs's side)"
    } else if second.contains("link count") {
        " (directory link counts)"
    } else if let Some(fields) = differing_fields(second) {
        return format!("{first} (in {fields})");
    } else {
        ""
    };
    format!("{first}{how}")
}

/// Which fields differ in a line of [`diff_trees`] that compares two
/// objects: `path: "OBJ" != "OBJ"`.
fn differing_fields(line: &str) -> Option<String> {
    let (_, objs) = line.split_once(": \"")?;
    let (a, b) = objs.trim_end_matches('"').split_once("\" != \"")?;
    let fields = |o: &str| -> Option<Vec<(String, String)>> {
        let (head, rest) = o.split_once(" content=")?;
        let (content, rest) = rest.rsplit_once(" target=")?;
        let (target, rest) = rest.split_once(" xattrs=")?;
        let (xattrs, mtime) = rest.split_once(" mtime=")?;
        let mut v: Vec<(String, String)> = head
            .split(' ')
            .enumerate()
            .map(|(i, f)| match f.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (
                    ["kind", "mode", "owner"].get(i).unwrap_or(&"?").to_string(),
                    f.to_string(),
                ),
            })
            .collect();
        for (k, x) in [
            ("content", content),
            ("target", target),
            ("xattrs", xattrs),
            ("mtime", mtime),
        ] {
            v.push((k.to_string(), x.to_string()));
        }
        Some(v)
    };
    let (fa, fb) = (fields(a)?, fields(b)?);
    let names: Vec<String> = fa
        .iter()
        .zip(&fb)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.0.clone())
        .collect();
    Some(names.join(", "))
}

/// Makes a failing case smaller by removing operations, layer entries and
/// layers one at a time, as long as it still fails the same way
/// ([`signature`]); at most `budget` runs. Returns the smaller case and
/// its report.
pub fn minimize(
    mode: Mode,
    stack: &Stack,
    ops: &[Op],
    report: String,
    budget: usize,
) -> (Stack, Vec<Op>, String) {
    let want = signature(&report);
    let (mut stack, mut ops, mut report) = (stack.clone(), ops.to_vec(), report);
    let runs = std::cell::Cell::new(0);
    let attempt = |st: &Stack, o: &[Op], report: &mut String| -> bool {
        if runs.get() >= budget {
            return false;
        }
        runs.set(runs.get() + 1);
        match try_case(mode, st, o).1 {
            Err(r) if signature(&r) == want => {
                *report = r;
                true
            }
            _ => false,
        }
    };
    loop {
        let mut smaller = false;
        for i in (0..ops.len()).rev() {
            let mut o = ops.clone();
            o.remove(i);
            if attempt(&stack, &o, &mut report) {
                ops = o;
                smaller = true;
            }
        }
        // Layer entries (with what is below them), upper included (as
        // layer number `lowers.len()`).
        let nlayers = stack.lowers.len() + 1;
        for l in (0..nlayers).rev() {
            let entries = |st: &Stack| {
                if l == st.lowers.len() {
                    st.upper.clone()
                } else {
                    st.lowers[l].clone()
                }
            };
            let n = entries(&stack).len();
            for j in (0..n).rev() {
                let mut st = stack.clone();
                let mut e = entries(&st);
                let Some((path, _)) = e.get(j).cloned() else {
                    continue;
                };
                e.retain(|(p, _)| *p != path && !p.starts_with(&format!("{path}/")));
                if l == st.lowers.len() {
                    st.upper = e;
                } else {
                    st.lowers[l] = e;
                }
                normalize(&mut st);
                if attempt(&st, &ops, &mut report) {
                    stack = st;
                    smaller = true;
                }
            }
        }
        for l in (0..stack.lowers.len()).rev() {
            if stack.lowers.len() > 1 {
                let mut st = stack.clone();
                st.lowers.remove(l);
                normalize(&mut st);
                if attempt(&st, &ops, &mut report) {
                    stack = st;
                    smaller = true;
                }
            }
        }
        if !smaller || runs.get() >= budget {
            return (stack, ops, report);
        }
    }
}

/// A test that replays a case; paste it into tests/conformance.rs.
pub fn reproducer(mode: Mode, stack: &Stack, ops: &[Op]) -> String {
    let mut s = format!(
        "#[test]\nfn regression_new() {{\n    replay_in(\n        Mode::{mode:?},\n        Stack {{\n"
    );
    let _ = writeln!(s, "            user_ns: {},", stack.user_ns);
    s.push_str("            lowers: vec![\n");
    for l in &stack.lowers {
        let _ = writeln!(s, "                {},", layer_code(l));
    }
    s.push_str("            ],\n");
    let _ = writeln!(s, "            upper: {},", layer_code(&stack.upper));
    s.push_str("        },\n        &[\n");
    for op in ops {
        let _ = writeln!(s, "            {},", op_code(op));
    }
    s.push_str("        ],\n    );\n}");
    s
}

fn layer_code(l: &[(String, Spec)]) -> String {
    let items: Vec<String> = l
        .iter()
        .map(|(p, s)| format!("(s({p:?}), {s:?})"))
        .collect();
    format!("vec![{}]", items.join(", "))
}

fn op_code(op: &Op) -> String {
    let b = |v: &Vec<u8>| format!("b({:?})", String::from_utf8_lossy(v));
    match op {
        Op::Create(p, m) => format!("Create(s({p:?}), 0o{m:o})"),
        Op::CreateTrunc(p) => format!("CreateTrunc(s({p:?}))"),
        Op::Write(p, o, d) => format!("Write(s({p:?}), {o}, {})", b(d)),
        Op::Append(p, d) => format!("Append(s({p:?}), {})", b(d)),
        Op::Truncate(p, l) => format!("Truncate(s({p:?}), {l})"),
        Op::Read(p) => format!("Read(s({p:?}))"),
        Op::Mkdir(p, m) => format!("Mkdir(s({p:?}), 0o{m:o})"),
        Op::Rmdir(p) => format!("Rmdir(s({p:?}))"),
        Op::Unlink(p) => format!("Unlink(s({p:?}))"),
        Op::Rename(a, c, f) => format!("Rename(s({a:?}), s({c:?}), {f})"),
        Op::Link(a, c) => format!("Link(s({a:?}), s({c:?}))"),
        Op::Symlink(t, p) => format!("Symlink(s({t:?}), s({p:?}))"),
        Op::Mkfifo(p) => format!("Mkfifo(s({p:?}))"),
        Op::Chmod(p, m) => format!("Chmod(s({p:?}), 0o{m:o})"),
        Op::Chown(p, u, g) => format!("Chown(s({p:?}), {u}, {g})"),
        Op::Utimens(p, a, m) => format!("Utimens(s({p:?}), {a}, {m})"),
        Op::SetXattr(p, n, v, f) => format!("SetXattr(s({p:?}), s({n:?}), {}, {f})", b(v)),
        Op::RemoveXattr(p, n) => format!("RemoveXattr(s({p:?}), s({n:?}))"),
        Op::GetXattr(p, n) => format!("GetXattr(s({p:?}), s({n:?}))"),
        Op::ListXattr(p) => format!("ListXattr(s({p:?}))"),
        Op::Stat(p) => format!("Stat(s({p:?}))"),
        Op::ReadDir(p) => format!("ReadDir(s({p:?}))"),
        Op::Readlink(p) => format!("Readlink(s({p:?}))"),
        Op::RememberIno(p, i) => format!("RememberIno(s({p:?}), {i})"),
        Op::SameIno(p, i) => format!("SameIno(s({p:?}), {i})"),
        Op::Remount => "Remount".to_string(),
    }
}
