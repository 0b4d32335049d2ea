//! Randomized differential testing: random layer stacks and random
//! operation sequences, run on the kernel's overlayfs and on plyfs over
//! copies of the same layers; any difference in a result or in the final
//! trees fails with a shrunk, ready-to-paste reproducer.
//!
//! One test per mode (see `Mode` in common/random.rs): the default
//! formats, the writeback cache, stacks mixing OCI and kernel markers,
//! metacopy on both sides, and plyfs taking over an upper the kernel wrote
//! with metacopy. Every mode remounts both sides in the middle of
//! sequences and at their end.
//!
//! CI runs a few cases per mode (120 of the default, 30 of the others);
//! PLYFS_CONFORMANCE_CASES=N runs N of every mode (a soak). A run stops
//! at its first failure, unless PLYFS_CONFORMANCE_KEEP_GOING is set: then
//! every case runs and each kind of failure is reported once. Each mode
//! prints how many cases it ran. PLYFS_CONFORMANCE_PLYFS_METACOPY sets
//! plyfs's option in the metacopy mode (default `metacopy=on`; empty:
//! none). Failures found are kept below as regression tests, and proptest
//! keeps their seeds in proptest-regressions/conformance*.txt.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Instant;

use common::ops::Op::*;
use common::random::{
    Mode, Spec::*, Stack, Stats, case_in, minimize, run_case_in, signature, try_case,
};
use common::require_mount_privileges;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestError, TestRunner};

fn cases(ci: u32) -> u32 {
    std::env::var("PLYFS_CONFORMANCE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci)
}

#[test]
fn random_sequences_match_the_kernel() {
    run_random(Mode::Default, cases(120));
}

/// Without passthrough a writable union runs with the kernel's writeback
/// cache (the mode of rootless mounts): the same comparison, fewer cases.
#[test]
fn random_sequences_match_the_kernel_with_writeback_cache() {
    run_random(Mode::Writeback, cases(30));
}

/// Char, xattr and OCI whiteouts and opaque markers mixed in one stack.
#[test]
fn random_sequences_match_the_kernel_over_mixed_formats() {
    run_random(Mode::Formats, cases(30));
}

#[test]
fn random_sequences_match_the_kernel_with_metacopy() {
    run_random(Mode::Metacopy, cases(30));
}

/// The kernel (metacopy=on) writes the upper, plyfs takes it over.
#[test]
fn random_sequences_on_an_upper_the_kernel_wrote() {
    run_random(Mode::KernelUpper, cases(30));
}

/// Counts of one mode's run (shrinking's runs included).
#[derive(Default)]
struct Tally {
    runs: u32,
    passed: u32,
    with_remounts: u32,
    with_oci: u32,
    kernel_metacopy: u32,
    plyfs_metacopy: u32,
    plyfs_warned: u32,
    kernel_changed: u32,
}

impl Tally {
    fn add(&mut self, s: &Stats, passed: bool) {
        self.runs += 1;
        self.passed += u32::from(passed);
        self.kernel_changed += u32::from(s.kernel_changed_by_remount);
        self.with_remounts += u32::from(s.remounts > 0);
        self.with_oci += u32::from(s.oci);
        self.kernel_metacopy += u32::from(s.kernel_metacopy);
        self.plyfs_metacopy += u32::from(s.plyfs_metacopy);
        self.plyfs_warned += u32::from(s.plyfs_unsupported_option);
    }
}

/// Runs at most this many more cases to make a failing one smaller.
const MINIMIZE_BUDGET: usize = 120;

fn run_random(mode: Mode, cases: u32) {
    if !require_mount_privileges() {
        return;
    }
    let start = Instant::now();
    let (tally, failures) = if std::env::var_os("PLYFS_CONFORMANCE_KEEP_GOING").is_some() {
        soak(mode, cases)
    } else {
        until_a_failure(mode, cases)
    };
    let t = tally;
    let mut line = format!(
        "conformance mode {}: {} cases run, {} passed, in {:.1} s; {} with remounts in the sequence",
        mode.name(),
        t.runs,
        t.passed,
        start.elapsed().as_secs_f64(),
        t.with_remounts
    );
    if mode == Mode::Formats {
        line += &format!(", {} with OCI markers", t.with_oci);
    }
    if matches!(mode, Mode::Metacopy | Mode::KernelUpper) {
        line += &format!(
            ", {} with metacopy files in the kernel's upper, {} in plyfs's",
            t.kernel_metacopy, t.plyfs_metacopy
        );
    }
    if t.kernel_changed > 0 {
        line += &format!(
            "; in {} the kernel's own view changed across a remount",
            t.kernel_changed
        );
    }
    if t.plyfs_warned > 0 {
        line += &format!(
            " (in {} cases plyfs warned of an unsupported option; its options: {:?})",
            t.plyfs_warned,
            mode.plyfs_opts(false)
        );
    }
    // Straight to the process's stderr: the test harness captures only
    // the print macros, and this line is wanted on every run.
    let _ = writeln!(std::io::stderr(), "{line}");
    if !failures.is_empty() {
        panic!(
            "mode {} (plyfs options {:?}): {} kind(s) of failure\n\n{}",
            mode.name(),
            mode.plyfs_opts(false),
            failures.len(),
            failures.join("\n\n========\n\n")
        );
    }
}

/// proptest's run: stops at the first failure, shrinks it (then
/// [`minimize`] makes it smaller still) and keeps its seed.
fn until_a_failure(mode: Mode, cases: u32) -> (Tally, Vec<String>) {
    let file = match mode {
        Mode::Default => "proptest-regressions/conformance.txt".to_string(),
        _ => format!("proptest-regressions/conformance-{}.txt", mode.name()),
    };
    let config = Config {
        cases,
        max_shrink_iters: 50,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(Box::leak(file.into_boxed_str())),
        )),
        ..Config::default()
    };
    let tally = std::cell::RefCell::new(Tally::default());
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case_in(mode), |(stack, ops)| {
        let (stats, r) = try_case(mode, &stack, &ops);
        tally.borrow_mut().add(&stats, r.is_ok());
        r.map_err(TestCaseError::fail)
    });
    let failures = match result {
        Ok(()) => vec![],
        Err(TestError::Fail(why, (stack, ops))) => {
            let (_, _, report) = minimize(mode, &stack, &ops, why.to_string(), MINIMIZE_BUDGET);
            vec![report]
        }
        Err(e) => vec![e.to_string()],
    };
    (tally.into_inner(), failures)
}

/// PLYFS_CONFORMANCE_KEEP_GOING: runs every case whatever fails, and
/// reports each kind of failure ([`signature`]) once, made small, with how
/// many cases failed that way.
fn soak(mode: Mode, cases: u32) -> (Tally, Vec<String>) {
    let mut tally = Tally::default();
    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut runner = TestRunner::new(Config::default());
    let strategy = case_in(mode);
    for _ in 0..cases {
        let (stack, ops) = strategy.new_tree(&mut runner).unwrap().current();
        let (stats, r) = try_case(mode, &stack, &ops);
        tally.add(&stats, r.is_ok());
        match r {
            Ok(()) => {}
            Err(report) => {
                let sig = signature(&report);
                if let Some((n, _)) = kinds.get_mut(&sig) {
                    *n += 1;
                } else {
                    let (_, _, small) = minimize(mode, &stack, &ops, report, MINIMIZE_BUDGET);
                    let _ = writeln!(
                        std::io::stderr(),
                        "conformance mode {}: new kind of failure: {sig}",
                        mode.name()
                    );
                    kinds.insert(sig, (1, small));
                }
            }
        }
    }
    let failures = kinds
        .into_iter()
        .map(|(sig, (n, report))| format!("{sig}: {n} case(s); the smallest found:\n{report}"))
        .collect();
    (tally, failures)
}

fn s(x: &str) -> String {
    x.to_string()
}

fn b(x: &str) -> Vec<u8> {
    x.as_bytes().to_vec()
}

fn replay(stack: Stack, ops: &[common::ops::Op]) {
    replay_in(Mode::Default, stack, ops);
}

fn replay_in(mode: Mode, stack: Stack, ops: &[common::ops::Op]) {
    if !require_mount_privileges() {
        return;
    }
    if let Err(e) = run_case_in(mode, &stack, ops) {
        panic!("{e}");
    }
}

/// Reported wrong view: a directory renamed (so it carries a redirect)
/// brought back, after a remount, lower content that an OCI whiteout of a
/// layer in between deletes: following the redirect did not honour
/// `.wh.` markers.
#[test]
fn regression_redirect_stops_at_an_oci_whiteout_after_a_remount() {
    replay_in(
        Mode::Formats,
        redirect_past_whiteout(OciWhiteout),
        &redirect_past_whiteout_ops(),
    );
}

/// The same with the kernel's char whiteout, which was right.
#[test]
fn regression_redirect_stops_at_a_char_whiteout_after_a_remount() {
    replay_in(
        Mode::Formats,
        redirect_past_whiteout(Whiteout),
        &redirect_past_whiteout_ops(),
    );
}

/// L3/b/ (empty), L2/.wh.b (or a char whiteout), L1/b/b; d in L3 and L1.
fn redirect_past_whiteout(whiteout: common::random::Spec) -> Stack {
    Stack {
        user_ns: false,
        lowers: vec![
            vec![(s("b"), Dir { mode: 0o755 }), (s("d"), Dir { mode: 0o755 })],
            vec![(s("b"), whiteout)],
            vec![
                (s("b"), Dir { mode: 0o755 }),
                (
                    s("b/b"),
                    File {
                        content: 1,
                        mode: 0o644,
                        xattr: false,
                    },
                ),
                (s("d"), Dir { mode: 0o755 }),
            ],
        ],
        upper: vec![],
    }
}

fn redirect_past_whiteout_ops() -> Vec<common::ops::Op> {
    vec![
        Chmod(s("b"), 0o700),
        Rename(s("b"), s("d/b"), 0),
        ReadDir(s("d/b")),
        Remount,
        ReadDir(s("d/b")),
    ]
}

/// Reported wrong view: a file the kernel copied up with metacopy=on
/// (chown: an upper inode without data, marked `overlay.metacopy`) read
/// as zeros through plyfs, with the right owner and size.
#[test]
fn regression_plyfs_reads_data_of_a_metacopy_file_the_kernel_wrote() {
    replay_in(
        Mode::KernelUpper,
        Stack {
            user_ns: false,
            lowers: vec![vec![(
                s("f"),
                File {
                    content: 4,
                    mode: 0o644,
                    xattr: false,
                },
            )]],
            upper: vec![],
        },
        // The remount is where plyfs takes over the kernel's upper.
        &[Chown(s("f"), 1234, 0), Remount, Read(s("f")), Stat(s("f"))],
    );
}

/// Found by the tester: a directory made opaque by OCI's `.wh..wh..opq`
/// reports a link count of 1 (as a merged directory), where the same
/// directory marked `opaque=y` reports its own (2), as the kernel does.
#[test]
fn regression_oci_opaque_directory_link_count() {
    replay_in(
        Mode::Formats,
        Stack {
            user_ns: false,
            lowers: vec![
                vec![(s("a"), OciOpaqueDir)],
                vec![(s("a"), Dir { mode: 0o555 })],
            ],
            upper: vec![],
        },
        &[Stat(s("a"))],
    );
}

/// Found by the tester: with the writeback cache, a file appended to shows
/// one mtime, and after a remount another (a few ms later: the time the
/// data reached the upper), where the kernel's view keeps it.
#[test]
fn regression_writeback_mtime_survives_a_remount() {
    replay_in(
        Mode::Writeback,
        Stack {
            user_ns: false,
            lowers: vec![vec![(
                s("a"),
                File {
                    content: 3,
                    mode: 0o444,
                    xattr: false,
                },
            )]],
            upper: vec![],
        },
        &[Truncate(s("a"), 6), Append(s("a"), b("hello")), Remount],
    );
}

/// Found by the tester: moving a lower directory over an empty upper one
/// left no whiteout behind, so the old name stayed visible.
#[test]
fn regression_dir_rename_over_empty_upper_dir_whites_out_the_source() {
    replay(
        Stack {
            user_ns: false,
            lowers: vec![vec![
                (s("a"), OpaqueDir),
                (s("b"), XDir),
                (s("b/z"), Fifo),
                (s("d"), OpaqueDir),
                (
                    s("d/z"),
                    File {
                        content: 2,
                        mode: 0o600,
                        xattr: false,
                    },
                ),
            ]],
            upper: vec![],
        },
        &[
            Mkdir(s("d/y"), 0o644),
            Rename(s("a"), s("d/y"), 0),
            ReadDir(s(".")),
            ReadDir(s("d/y")),
        ],
    );
}

/// Found by the tester: a directory copied up because of a change below
/// it becomes merged (link count 1), which the kernel must be told.
#[test]
fn regression_parent_copy_up_invalidates_cached_attributes() {
    replay(
        Stack {
            user_ns: false,
            lowers: vec![
                vec![(
                    s("d"),
                    File {
                        content: 3,
                        mode: 0o644,
                        xattr: true,
                    },
                )],
                vec![
                    (s("a"), Dir { mode: 0o555 }),
                    (
                        s("a/y"),
                        File {
                            content: 1,
                            mode: 0o600,
                            xattr: true,
                        },
                    ),
                ],
            ],
            upper: vec![],
        },
        &[
            Stat(s("a")),
            Utimens(s("a/y"), 1000002, 2000001),
            Stat(s("a")),
        ],
    );
}

/// Found by the soak: a change to a hard-linked lower file copied it up at
/// the name it was last looked up by (and that name's directory with it)
/// rather than the name used. Its copy now lives in the index only.
#[test]
fn regression_hard_link_copy_up_goes_to_the_index_only() {
    replay(
        Stack {
            user_ns: false,
            lowers: vec![
                vec![
                    (s("a"), Dir { mode: 0o555 }),
                    (s("a/x"), Hardlink { to: 3 }),
                    (s("c"), Dir { mode: 0o700 }),
                    (
                        s("d"),
                        File {
                            content: 0,
                            mode: 0o600,
                            xattr: false,
                        },
                    ),
                ],
                vec![
                    (s("b"), SymlinkTo { target: 1 }),
                    (s("d"), Dir { mode: 0o555 }),
                ],
            ],
            upper: vec![],
        },
        &[
            ReadDir(s(".")),
            GetXattr(s("a/x"), s("user.k")),
            Utimens(s("d"), 1000000, 2000000),
            Stat(s("a")),
        ],
    );
}

/// Found by the tester: in userxattr mode a symlink cannot carry
/// user.overlay.origin, which failed its copy-up with EPERM.
#[test]
fn regression_symlink_copy_up_in_user_namespace() {
    replay(
        Stack {
            user_ns: true,
            lowers: vec![
                vec![
                    (s("c"), OpaqueDir),
                    (
                        s("c/x"),
                        File {
                            content: 0,
                            mode: 0o644,
                            xattr: false,
                        },
                    ),
                ],
                vec![
                    (s("a"), Dir { mode: 0o700 }),
                    (s("a/x"), SymlinkTo { target: 2 }),
                ],
            ],
            upper: vec![],
        },
        &[
            Rename(s("a/x"), s("b"), 0),
            Readlink(s("b")),
            Stat(s("a/x")),
        ],
    );
}

/// Found by the soak: the second deliberate difference (see random.rs): a
/// hard link opened for writing is copied into the index, its directory
/// stays in the lower; the kernel copies that directory up too.
#[test]
fn regression_hard_link_written_through_open() {
    replay(
        Stack {
            user_ns: false,
            lowers: vec![
                vec![
                    (
                        s("b"),
                        File {
                            content: 1,
                            mode: 0o600,
                            xattr: true,
                        },
                    ),
                    (s("c"), Dir { mode: 0o755 }),
                    (s("c/z"), Hardlink { to: 1 }),
                ],
                vec![(
                    s("c"),
                    File {
                        content: 0,
                        mode: 0o644,
                        xattr: false,
                    },
                )],
            ],
            upper: vec![],
        },
        &[
            CreateTrunc(s("c/z")),
            Stat(s("c")),
            Read(s("b")),
            Stat(s("b")),
        ],
    );
}

/// Found by the tester (a tester artifact): the kernel refuses this
/// directory move in a userxattr stack (EXDEV) and the tester emulates it
/// with `cp -a`, which left the copy setgid inside a setgid parent.
#[test]
fn regression_emulated_move_into_a_setgid_dir() {
    replay(
        Stack {
            user_ns: true,
            lowers: vec![
                vec![(s("b"), Dir { mode: 0o700 }), (s("c"), XDir)],
                vec![(s("c"), Dir { mode: 0o755 })],
            ],
            upper: vec![],
        },
        &[Chmod(s("c"), 0o2755), Rename(s("b"), s("c/x"), 0)],
    );
}

/// Found by the tester: the kernel hides an xattr whiteout from readdir
/// but will not remove the directory holding it (ENOTEMPTY).
#[test]
fn regression_xattr_whiteout_keeps_a_directory_from_rmdir() {
    replay(
        Stack {
            user_ns: false,
            lowers: vec![
                vec![(s("a"), XDir), (s("a/x"), Whiteout), (s("a/z"), XWhiteout)],
                vec![(s("a"), OpaqueDir)],
            ],
            upper: vec![],
        },
        &[Rmdir(s("a"))],
    );
}

/// Found by the tester (a tester artifact): plyfs exchanges two
/// directories the kernel will not rename in a userxattr stack (EXDEV),
/// and the tester's copy-and-delete emulation cannot delete one of them on
/// the kernel (it holds an xattr whiteout).
#[test]
fn regression_exchange_of_a_directory_the_kernel_cannot_delete() {
    replay(
        Stack {
            user_ns: true,
            lowers: vec![
                vec![
                    (
                        s("b"),
                        File {
                            content: 0,
                            mode: 0o644,
                            xattr: false,
                        },
                    ),
                    (s("c"), XDir),
                    (s("c/x"), XWhiteout),
                    (
                        s("c/z"),
                        File {
                            content: 0,
                            mode: 0o644,
                            xattr: false,
                        },
                    ),
                ],
                vec![(
                    s("b"),
                    File {
                        content: 1,
                        mode: 0o444,
                        xattr: true,
                    },
                )],
                vec![(s("c"), Dir { mode: 0o555 })],
                vec![
                    (s("a"), Dir { mode: 0o555 }),
                    (s("a/y"), SymlinkTo { target: 2 }),
                    (s("b"), Dir { mode: 0o700 }),
                    (s("b/z"), SymlinkTo { target: 3 }),
                ],
            ],
            upper: vec![],
        },
        &[Rename(s("a"), s("c"), 2)],
    );
}
