//! Random layer stacks and operation sequences for the differential
//! tester, and the runner that compares plyfs with the kernel's overlayfs
//! on them. A failure prints a reproducer that compiles as a test.

use std::fmt::Write as _;
use std::path::Path;

use proptest::prelude::*;

use super::ops::{Op, Outcome, Twin, walk_xattrs};
use super::{Compare, LayerBuilder, diff_trees, snapshot};

/// Top-level names; `e` never exists in generated layers.
pub const TOP: [&str; 5] = ["a", "b", "c", "d", "e"];
/// Names inside directories.
pub const SUB: [&str; 3] = ["x", "y", "z"];

/// What one path is in one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
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

fn leaf(in_dir: bool) -> impl Strategy<Value = Spec> {
    prop_oneof![
        6 => (0u8..4, prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o444]), any::<bool>())
            .prop_map(|(content, mode, xattr)| Spec::File { content, mode, xattr }),
        2 => (0u8..4).prop_map(|target| Spec::SymlinkTo { target }),
        3 => Just(Spec::Whiteout),
        1 => Just(Spec::Fifo),
        2 => (0usize..4).prop_map(|to| Spec::Hardlink { to }),
        2 => Just(if in_dir { Spec::XWhiteout } else { Spec::Whiteout }),
    ]
}

fn dir_spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => prop::sample::select(vec![0o755u32, 0o700, 0o555]).prop_map(|mode| Spec::Dir { mode }),
        2 => Just(Spec::OpaqueDir),
        1 => Just(Spec::XDir),
    ]
}

/// One layer: for each top-level name nothing, a leaf, or a directory
/// with leaves.
fn layer() -> impl Strategy<Value = Vec<(String, Spec)>> {
    let top = prop_oneof![
        3 => Just(None),
        3 => leaf(false).prop_map(|l| Some((l, Vec::new()))),
        3 => (dir_spec(), prop::collection::vec(prop::option::weighted(0.5, leaf(true)), 3))
            .prop_map(|(d, kids)| Some((d, kids))),
    ];
    prop::collection::vec(top, 4).prop_map(|tops| {
        let mut out = Vec::new();
        for (i, t) in tops.into_iter().enumerate() {
            let Some((spec, kids)) = t else { continue };
            let is_x = spec == Spec::XDir;
            let is_dir = matches!(spec, Spec::Dir { .. } | Spec::OpaqueDir | Spec::XDir);
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

pub fn stack() -> impl Strategy<Value = Stack> {
    (
        prop::bool::weighted(0.2),
        prop::collection::vec(layer(), 1..=4),
        prop::option::weighted(0.2, layer()),
    )
        .prop_map(|(user_ns, mut lowers, upper)| {
            // The bottom layer has nothing to hide: xattr whiteouts there
            // read differently in the kernel's lookup and readdir.
            if let Some(bottom) = lowers.last_mut() {
                for (_, s) in bottom.iter_mut() {
                    if *s == Spec::XWhiteout {
                        *s = Spec::Whiteout;
                    }
                }
            }
            let mut upper = upper.unwrap_or_default();
            // Xattr whiteouts are a lower-layer format; an upper's "x"
            // directory is not honoured by the kernel.
            for (_, s) in upper.iter_mut() {
                match s {
                    Spec::XWhiteout => *s = Spec::Whiteout,
                    Spec::XDir => *s = Spec::Dir { mode: 0o755 },
                    _ => {}
                }
            }
            let mut s = Stack {
                user_ns,
                lowers,
                upper,
            };
            drop_unmerged_whiteouts(&mut s);
            if user_ns {
                // Directories there move by copying on the kernel's side
                // (see deliberate_difference), which breaks hard links that
                // reach outside them: keep hard links out of the picture.
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
            s
        })
}

fn is_dir_spec(s: &Spec) -> bool {
    matches!(s, Spec::Dir { .. } | Spec::OpaqueDir | Spec::XDir)
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
            !matches!(spec, Spec::Whiteout | Spec::XWhiteout) || merged(i, dir, &all)
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
                l.file_mode(path, &format!("content {content} of {path}\n"), *mode);
                if *xattr {
                    l.xattr(path, "user.k", format!("v{content}").as_bytes());
                }
            }
            Spec::Dir { .. } | Spec::OpaqueDir | Spec::XDir => {
                l.dir(path);
                match spec {
                    Spec::OpaqueDir => {
                        l.xattr(path, &format!("{ns}opaque"), b"y");
                    }
                    Spec::XDir => {
                        l.xattr(path, &format!("{ns}opaque"), b"x");
                    }
                    _ => {}
                }
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
        2 => (path(), 0u64..8, data()).prop_map(|(p, o, d)| Op::Write(p, o, d)),
        2 => (path(), data()).prop_map(|(p, d)| Op::Append(p, d)),
        1 => (path(), 0u64..12).prop_map(|(p, l)| Op::Truncate(p, l)),
        2 => path().prop_map(Op::Read),
        3 => (path(), mode()).prop_map(|(p, m)| Op::Mkdir(p, m)),
        3 => path().prop_map(Op::Rmdir),
        4 => path().prop_map(Op::Unlink),
        6 => (path(), path(), flags).prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        2 => (path(), path()).prop_map(move |(a, b)| if links { Op::Link(a, b) } else { Op::Stat(a) }),
        1 => (prop::sample::select(TARGETS.iter().map(|t| t.to_string()).collect::<Vec<_>>()), path())
            .prop_map(|(t, p)| Op::Symlink(t, p)),
        1 => path().prop_map(Op::Mkfifo),
        2 => (path(), mode()).prop_map(|(p, m)| Op::Chmod(p, m)),
        1 => (path(), prop::sample::select(vec![0u32, 1000]), prop::sample::select(vec![0u32, 1000]))
            .prop_map(|(p, u, g)| Op::Chown(p, u, g)),
        1 => (path(), 0i64..3, 0i64..3).prop_map(|(p, a, m)| Op::Utimens(p, 1_000_000 + a, 2_000_000 + m)),
        2 => (path(), xname.clone(), data(), prop::sample::select(vec![0, libc::XATTR_CREATE, libc::XATTR_REPLACE]))
            .prop_map(|(p, n, v, f)| Op::SetXattr(p, n, v, f)),
        1 => (path(), xname.clone()).prop_map(|(p, n)| Op::RemoveXattr(p, n)),
        1 => (path(), xname).prop_map(|(p, n)| Op::GetXattr(p, n)),
        1 => path().prop_map(Op::ListXattr),
        3 => path().prop_map(Op::Stat),
        3 => dir_path().prop_map(Op::ReadDir),
        1 => path().prop_map(Op::Readlink),
    ]
}

/// A stack with a sequence of operations for it.
pub fn case() -> impl Strategy<Value = (Stack, Vec<Op>)> {
    stack().prop_flat_map(|s| {
        let links = !s.user_ns;
        (Just(s), prop::collection::vec(op(links), 1..25))
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

/// Runs one case, with `extra` added to plyfs's mount options; on a
/// difference returns the report.
pub fn run_case(stack: &Stack, ops: &[Op], extra: &str) -> Result<(), String> {
    let opts: Vec<&str> = [if stack.user_ns { "userxattr" } else { "" }, extra]
        .into_iter()
        .filter(|o| !o.is_empty())
        .collect();
    let n = stack.lowers.len();
    let mut t = Twin::configured(n, &opts.join(","), stack.user_ns, |dir, i| {
        materialize(dir, &stack.lowers[i], stack.user_ns)
    });
    if !stack.upper.is_empty() {
        t.unmount();
        for side in ["k", "p"] {
            materialize(
                &t.scratch.path(&format!("{side}/upper")),
                &stack.upper,
                stack.user_ns,
            );
        }
        t.mount();
    }
    let report = |t: &Twin, what: String, upto: usize| {
        Err(format!(
            "{what}\n\n{}\n\nlog:\n{}",
            reproducer(stack, &ops[..upto]),
            t.log.join("\n")
        ))
    };
    let mut emulated = false;
    for (i, op) in ops.iter().enumerate() {
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
    let (ktree, ptree) = (snapshot(&t.kmnt()), snapshot(&t.pmnt()));
    let mut d = diff_trees(
        &ktree,
        &ptree,
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
                && !dir_copied_up_by_kernel_only(&t, &path.to_string_lossy(), ko.nlink)
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
    if !d.is_empty() {
        return report(
            &t,
            format!("final trees differ:\n{}", d.join("\n")),
            ops.len(),
        );
    }
    // The kernel reads back what plyfs wrote (in userxattr mode only
    // without redirects, which that mode refuses to follow)...
    let redirects = walk_xattrs(&t.scratch.path("p/upper"))
        .iter()
        .any(|(_, n)| n.iter().any(|n| n.ends_with("overlay.redirect")));
    if !(stack.user_ns && redirects)
        && let Err(e) = t.check_kernel_reads_plyfs_upper()
    {
        return report(&t, e, ops.len());
    }
    // ... and plyfs reads back what the kernel wrote.
    if let Err(e) = t.check_plyfs_reads_kernel_upper() {
        return report(&t, e, ops.len());
    }
    Ok(())
}

/// A test that replays a case; paste it into tests/conformance.rs.
pub fn reproducer(stack: &Stack, ops: &[Op]) -> String {
    let mut s = String::from("#[test]\nfn regression_new() {\n    replay(\n        Stack {\n");
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
    }
}
