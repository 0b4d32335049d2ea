//! Randomized differential testing: random layer stacks and random
//! operation sequences, run on the kernel's overlayfs and on plyfs over
//! copies of the same layers; any difference in a result or in the final
//! trees fails with a shrunk, ready-to-paste reproducer.
//!
//! PLYFS_CONFORMANCE_CASES sets the number of cases (CI runs the default;
//! a soak runs thousands). Failures found are kept below as regression
//! tests, and proptest keeps their seeds in proptest-regressions/conformance.txt.

mod common;

use common::ops::Op::*;
use common::random::{Spec::*, Stack, case, run_case};
use common::require_mount_privileges;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("PLYFS_CONFORMANCE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120)
}

#[test]
fn random_sequences_match_the_kernel() {
    run_random(cases(), "");
}

/// Without passthrough a writable union runs with the kernel's writeback
/// cache (the mode of rootless mounts): the same comparison, fewer cases.
#[test]
fn random_sequences_match_the_kernel_with_writeback_cache() {
    run_random(cases().div_ceil(4), "passthrough=0");
}

fn run_random(cases: u32, extra: &str) {
    if !require_mount_privileges() {
        return;
    }
    let config = Config {
        cases,
        max_shrink_iters: 400,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/conformance.txt",
            ),
        )),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |(stack, ops)| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(&stack, &ops, extra)
        }));
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(report)) => Err(TestCaseError::fail(report)),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(TestCaseError::fail(format!(
                    "panicked: {}\n\n{}",
                    msg.unwrap_or_default(),
                    common::random::reproducer(&stack, &ops)
                )))
            }
        }
    });
    if let Err(e) = result {
        panic!("plyfs mounted with extra options {extra:?}:\n{e}");
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

#[allow(dead_code)]
fn b(x: &str) -> Vec<u8> {
    x.as_bytes().to_vec()
}

fn replay(stack: Stack, ops: &[common::ops::Op]) {
    if !require_mount_privileges() {
        return;
    }
    if let Err(e) = run_case(&stack, ops, "") {
        panic!("{e}");
    }
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
