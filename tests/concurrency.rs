//! Several threads doing random operations on one plyfs mount at once must
//! never crash or deadlock it, and must leave an upper layer that reads the
//! same when plyfs mounts it again and when the kernel's overlayfs does.

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::ops::apply;
use common::random::{materialize, op, stack};
use common::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const THREADS: usize = 4;
const OPS: usize = 300;

#[test]
fn parallel_random_operations_leave_a_consistent_union() {
    if !require_mount_privileges() {
        return;
    }
    for round in 0..16u8 {
        let seed = [round; 32];
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        let mut st = stack().new_tree(&mut runner).unwrap().current();
        // Kernel-format markers: the kernel checks the result below.
        st.user_ns = false;
        let s = Scratch::new();
        let lowers: Vec<std::path::PathBuf> = (0..st.lowers.len())
            .map(|i| s.path(&format!("l{i}")))
            .collect();
        for (i, l) in lowers.iter().enumerate() {
            std::fs::create_dir_all(l).unwrap();
            materialize(l, &st.lowers[i], false);
        }
        let (upper, work) = (s.mkdir("upper"), s.mkdir("work"));
        let refs: Vec<&std::path::Path> = lowers.iter().map(|p| p.as_path()).collect();
        let opts = format!(
            "{},upperdir={},workdir={}",
            lowerdir(&refs),
            upper.display(),
            work.display()
        );
        let ply = PlyfsMount::new(&opts, &s.path("mnt"));
        let start = Instant::now();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let mnt = ply.mnt.clone();
                let mut seed = [round; 32];
                seed[0] = t as u8;
                std::thread::spawn(move || {
                    let mut runner = TestRunner::new_with_rng(
                        Config::default(),
                        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
                    );
                    let strategy = op(true);
                    let root =
                        plyfs_sys::fs::open_path(&mnt, libc::O_PATH | libc::O_DIRECTORY).unwrap();
                    let mut inos = Vec::new();
                    for _ in 0..OPS {
                        let o = strategy.new_tree(&mut runner).unwrap().current();
                        let r = apply(root.as_fd(), &o, &mut inos);
                        // A dead daemon answers ENOTCONN to everything.
                        assert_ne!(r, Err(libc::ENOTCONN), "plyfs died during {o}");
                    }
                })
            })
            .collect();
        let deadline = Duration::from_secs(120);
        while threads.iter().any(|t| !t.is_finished()) {
            assert!(
                start.elapsed() < deadline,
                "round {round}: operations still running after {deadline:?}: deadlock?"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for t in threads {
            t.join().expect("worker thread");
        }
        let seen = snapshot(&ply.mnt);
        let log = ply.unmount();
        assert!(!log.contains("panicked"), "{log}");
        assert!(
            std::fs::read_dir(work.join("work"))
                .unwrap()
                .next()
                .is_none(),
            "work dir left dirty"
        );
        // The same union after a remount, by plyfs and by the kernel.
        let again = PlyfsMount::new(&opts, &s.path("mnt"));
        assert_same_trees(&seen, &snapshot(&again.mnt), Compare::default());
        drop(again);
        let kernel = KernelMount::new(&format!("{opts},redirect_dir=on,index=on"), &s.path("kmnt"));
        let d = diff_trees(&seen, &snapshot(&kernel.mnt), Compare::default());
        assert!(
            d.is_empty(),
            "round {round}: the kernel reads the upper differently:\n{}",
            d.join("\n")
        );
    }
}
