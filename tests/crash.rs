//! Crash soak: the daemon is killed (SIGKILL) at a random moment while
//! workers change the union — small creates, appends, overwrites, chmods,
//! truncates, renames, unlinks, hard links of lower hard links, directory
//! renames, and large copy-ups (by data, and metacopy copy-ups by chmod).
//! After each kill the stale mount goes, `plyfs check` finds nothing but
//! a crash's leftovers and `--repair` removes them, plyfs remounts the
//! same layers, and every lane shows the state before its last operation
//! or after it (never a partial copy-up, a missing parent, a lost hard
//! link or a changed inode number); everything fsync'ed is there. Every
//! few rounds the kernel's overlayfs mounts the upper and must show the
//! same tree.
//!
//! A few rounds run by default, on both data paths (passthrough, and the
//! writeback cache of `passthrough=0`), with metacopy on every other round.
//! The soak: `PLYFS_CRASH_ROUNDS=200 PLYFS_CRASH_BIG_MB=64 cargo test
//! --release --test crash -- --nocapture`.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::bigfiles::{Big, BigOp};
use common::lanes::{self, Model, Rng};
use common::*;

const LANES: usize = 4;
const BIGS: usize = 4;
/// A lane stops making new names beyond this many.
const LANE_MAX: usize = 80;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One lane's knowledge: its model, what was in flight at the kill, the
/// inode number of each file, and counters for new names.
#[derive(Default)]
struct Lane {
    model: Model,
    pending: Option<lanes::Pending>,
    inos: HashMap<u64, u64>,
    next_id: u64,
    fresh: u64,
}

struct Soak {
    s: Scratch,
    passthrough: bool,
    big_size: u64,
    lanes: Vec<Lane>,
    bigs: Vec<Big>,
    big_pending: Option<(BigOp, Vec<Vec<Big>>)>,
    rng: Rng,
    /// Operations completed, and where the ones in flight at a kill ended.
    ops: u64,
    outcomes: std::collections::BTreeMap<String, u64>,
}

/// A lane worker's state when the daemon died.
struct LaneEnd {
    model: Model,
    pending: Option<lanes::Pending>,
    next_id: u64,
    fresh: u64,
    ops: u64,
}

/// What a worker hands back: its state when the daemon died, or a failure
/// that came before (a bug).
type LaneResult = Result<LaneEnd, String>;

impl Soak {
    fn new(passthrough: bool, seed: u64) -> Soak {
        let s = Scratch::new();
        let big_size = env_num("PLYFS_CRASH_BIG_MB", 8) << 20;
        for k in 0..LANES {
            let l2 = LayerBuilder::new(s.path(&format!("l2/lanes/lane{k}")));
            for i in 0..10 {
                l2.file(&format!("f{i}"), &"b".repeat(lanes::BLOCK * (1 + i % 3)));
            }
            l2.file("d/a", &"a".repeat(lanes::BLOCK))
                .file("d/b", &"b".repeat(lanes::BLOCK))
                .file("e/x", &"x".repeat(lanes::BLOCK))
                .file("h1", &"h".repeat(lanes::BLOCK))
                .hardlink("h1", "h2");
            let l1 = LayerBuilder::new(s.path(&format!("l1/lanes/lane{k}")));
            for i in 5..13 {
                l1.file(&format!("f{i}"), &"t".repeat(lanes::BLOCK * (1 + i % 2)));
            }
            l1.file("d/c", &"c".repeat(lanes::BLOCK))
                .file("dd/z", &"z".repeat(lanes::BLOCK))
                .symlink("s", "f0");
        }
        let bigs = (0..BIGS)
            .map(|k| {
                let b = Big::lower(k, big_size);
                b.write(&s.path(&format!("l2/big/big{k}")));
                b
            })
            .collect();
        for d in ["upper", "work"] {
            s.mkdir(d);
        }
        Soak {
            s,
            passthrough,
            big_size,
            lanes: (0..LANES).map(|_| Lane::default()).collect(),
            bigs,
            big_pending: None,
            rng: Rng::new(seed),
            ops: 0,
            outcomes: Default::default(),
        }
    }

    fn lowerdir(&self) -> String {
        format!(
            "{}:{}",
            self.s.path("l1").display(),
            self.s.path("l2").display()
        )
    }

    fn opts(&self, metacopy: bool) -> String {
        let mut o = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowerdir(),
            self.s.path("upper").display(),
            self.s.path("work").display()
        );
        if !self.passthrough {
            o.push_str(",passthrough=0");
        }
        if metacopy {
            o.push_str(",metacopy=on");
        }
        o
    }

    /// Every lane and big file as the model says (or, for what was in
    /// flight, one of the states it allows); adopts what is seen.
    fn verify(&mut self, mnt: &Path, first: bool) -> Result<(), String> {
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            let root = mnt.join(format!("lanes/lane{k}"));
            let seen = lanes::observe(&root).map_err(|e| format!("lane{k}: {e}"))?;
            if first {
                lane.model = Model::from_seen(&seen, &mut lane.next_id);
                lane.inos = lane.model.inos(&seen);
                continue;
            }
            let pending = lane.pending.take();
            let mut states = pending
                .as_ref()
                .map(|p| p.states.clone())
                .unwrap_or_default();
            states.push(lane.model.clone());
            let found = states
                .iter()
                .position(|m| m.mismatch(&seen, &lane.inos).is_none());
            if let (Some(p), Some(i)) = (&pending, found) {
                // Which state the operation in flight left: how often a
                // kill lands mid-operation, and where.
                let what = if i == 0 {
                    "after"
                } else if i + 1 == states.len() {
                    "before"
                } else {
                    "between"
                };
                *self
                    .outcomes
                    .entry(format!("{} {what}", op_name(&p.op)))
                    .or_default() += 1;
            }
            let Some(m) = found.map(|i| &states[i]) else {
                return Err(format!(
                    "lane{k} is neither before nor after its last operation: {}",
                    states
                        .iter()
                        .filter_map(|m| m.mismatch(&seen, &lane.inos))
                        .collect::<Vec<_>>()
                        .join("\n  or: ")
                ));
            };
            lane.model = m.clone();
            lane.inos.extend(m.inos(&seen));
        }
        let pending = self.big_pending.take();
        // A kill during the first change of a file since its reset is one
        // during its copy-up (of data, or of metadata with metacopy).
        let label = match &pending {
            Some((op, _)) if !self.bigs[op.file()].copied && !matches!(op, BigOp::Read(..)) => {
                "big copy-up"
            }
            _ => "big",
        };
        let mut states = pending.map(|(_, s)| s).unwrap_or_default();
        states.push(self.bigs.clone());
        let mut why = Vec::new();
        let n = states.len();
        for (i, st) in states.iter().enumerate() {
            match st
                .iter()
                .enumerate()
                .try_for_each(|(k, b)| b.verify(&mnt.join(format!("big/big{k}"))))
            {
                Ok(()) => {
                    if n > 1 {
                        let what = if i + 1 == n { "before" } else { "after" };
                        *self.outcomes.entry(format!("{label} {what}")).or_default() += 1;
                    }
                    self.bigs = st.clone();
                    return Ok(());
                }
                Err(e) => why.push(e),
            }
        }
        Err(format!("big files: {}", why.join("\n  or: ")))
    }

    /// One round: mount, verify, work, kill, check.
    fn round(&mut self, r: u64, max_delay_ms: u64) -> Result<(), String> {
        let metacopy = r.is_multiple_of(2);
        let ply = PlyfsMount::try_new(&self.opts(metacopy), &self.s.path("mnt"))?;
        if std::fs::read_dir(self.s.path("work/work"))
            .map_err(|e| e.to_string())?
            .next()
            .is_some()
        {
            return Err("work/work not empty after the mount".into());
        }
        self.verify(&ply.mnt, r == 0)?;
        let killed = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for (k, lane) in self.lanes.iter().enumerate() {
            let root = ply.mnt.join(format!("lanes/lane{k}"));
            let (model, mut next_id, mut fresh) = (lane.model.clone(), lane.next_id, lane.fresh);
            let mut rng = Rng::new(self.rng.next());
            let killed = killed.clone();
            workers.push(std::thread::spawn(move || -> LaneResult {
                let mut model = model;
                let mut ops = 0;
                loop {
                    let grow = model.names.len() < LANE_MAX;
                    let op = model.choose(&mut rng, &mut fresh, grow);
                    let states = model.plan(&op, &mut next_id);
                    match lanes::apply(&root, &op) {
                        Ok(()) => {
                            model = states[0].clone();
                            ops += 1;
                        }
                        Err(_) if killed.load(Ordering::SeqCst) => {
                            let pending = Some(lanes::Pending { op, states });
                            return Ok(LaneEnd {
                                model,
                                pending,
                                next_id,
                                fresh,
                                ops,
                            });
                        }
                        Err(e) => return Err(format!("lane{k}: {op:?} failed: {e}")),
                    }
                }
            }));
        }
        let big_worker = {
            let root = ply.mnt.join("big");
            let bigs = self.bigs.clone();
            let mut rng = Rng::new(self.rng.next());
            let killed = killed.clone();
            std::thread::spawn(move || common::bigfiles::work(&root, bigs, &mut rng, &killed))
        };
        let delay = 20 + self.rng.below(max_delay_ms.max(21) - 20);
        std::thread::sleep(Duration::from_millis(delay));
        killed.store(true, Ordering::SeqCst);
        plyfs_sys::process::kill(ply.pid() as i32, libc::SIGKILL).map_err(|e| e.to_string())?;
        let mut failures = Vec::new();
        for (k, w) in workers.into_iter().enumerate() {
            match w.join() {
                Ok(Ok(end)) => {
                    let lane = &mut self.lanes[k];
                    (lane.model, lane.pending, lane.next_id, lane.fresh) =
                        (end.model, end.pending, end.next_id, end.fresh);
                    self.ops += end.ops;
                }
                Ok(Err(e)) => failures.push(e),
                Err(_) => failures.push(format!("lane{k} panicked")),
            }
        }
        match big_worker.join() {
            Ok(Ok((bigs, pending, ops))) => {
                self.bigs = bigs;
                self.big_pending = pending;
                self.ops += ops;
            }
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("big files worker panicked".into()),
        }
        drop(ply);
        if !failures.is_empty() {
            return Err(failures.join("\n"));
        }
        self.check_after_crash()?;
        self.reset_bigs();
        Ok(())
    }

    /// `plyfs check` finds only a crash's leftovers, `--repair` removes
    /// them, and then the upper checks clean with an empty work/.
    fn check_after_crash(&self) -> Result<(), String> {
        let (code, out, err) = self.check(false);
        let unexpected: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with("leftover:"))
            .collect();
        if code != 0 || !unexpected.is_empty() {
            return Err(format!(
                "plyfs check after a crash (exit {code}):\n{out}{err}"
            ));
        }
        let (code, out, err) = self.check(true);
        if code > 1 {
            return Err(format!("plyfs check --repair (exit {code}):\n{out}{err}"));
        }
        self.assert_clean()
    }

    fn assert_clean(&self) -> Result<(), String> {
        let (code, out, err) = self.check(false);
        if code != 0 || !out.is_empty() {
            return Err(format!("plyfs check not clean (exit {code}):\n{out}{err}"));
        }
        let work = std::fs::read_dir(self.s.path("work/work"))
            .map(|d| d.count())
            .unwrap_or(0);
        if work != 0 {
            return Err(format!("{work} leftover(s) in work/work after the repair"));
        }
        Ok(())
    }

    fn check(&self, repair: bool) -> (i32, String, String) {
        let mut args: Vec<std::ffi::OsString> = vec![
            "check".into(),
            self.s.path("upper").into(),
            "--lowerdir".into(),
            self.lowerdir().into(),
            "--work".into(),
            self.s.path("work").into(),
        ];
        if repair {
            args.push("--repair".into());
        }
        let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        plyfs(&refs)
    }

    /// Between mounts, some big files lose their upper copy (an offline
    /// change to the upper, which is allowed), so that every round has
    /// large copy-ups to interrupt.
    fn reset_bigs(&mut self) {
        for _ in 0..2 {
            let k = self.rng.below(BIGS as u64) as usize;
            let up = self.s.path(&format!("upper/big/big{k}"));
            if std::fs::symlink_metadata(&up).is_ok() {
                std::fs::remove_file(&up).expect("reset a big file");
            }
            self.bigs[k] = Big::lower(k, self.big_size);
            if let Some((_, states)) = &mut self.big_pending {
                for st in states {
                    st[k] = Big::lower(k, self.big_size);
                }
            }
        }
    }

    /// The kernel's overlayfs over the same layers shows what plyfs shows.
    fn oracle(&mut self) -> Result<(), String> {
        let lanes_ply = {
            let ply = PlyfsMount::try_new(&self.opts(true), &self.s.path("mnt"))?;
            self.verify(&ply.mnt, false)?;
            snapshot(&ply.mnt.join("lanes"))
        };
        let kopts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=on,metacopy=on",
            self.lowerdir(),
            self.s.path("upper").display(),
            self.s.path("work").display()
        );
        {
            let k = KernelMount::new(&kopts, &self.s.path("kmnt"));
            let how = Compare {
                dir_nlink: false,
                ..Compare::default()
            };
            let d = diff_trees(&lanes_ply, &snapshot(&k.mnt.join("lanes")), how);
            if !d.is_empty() {
                return Err(format!(
                    "the kernel reads the upper differently:\n{}",
                    d.join("\n")
                ));
            }
            for (k_, b) in self.bigs.iter().enumerate() {
                b.verify(&k.mnt.join(format!("big/big{k_}")))
                    .map_err(|e| format!("kernel: {e}"))?;
            }
        }
        self.assert_clean()
    }
}

fn soak(passthrough: bool) {
    if !require_mount_privileges() {
        return;
    }
    // Files are made with exactly the modes the model gives them.
    plyfs_sys::fs::umask(0o022);
    let rounds = env_num("PLYFS_CRASH_ROUNDS", 3);
    let max_delay = env_num("PLYFS_CRASH_MAX_DELAY_MS", 800);
    let oracle_every = env_num("PLYFS_CRASH_ORACLE_EVERY", 25).max(1);
    let seed = env_num("PLYFS_CRASH_SEED", std::process::id() as u64);
    let mut soak = Soak::new(passthrough, seed);
    let path = if passthrough {
        "passthrough"
    } else {
        "writeback"
    };
    let start = Instant::now();
    let mut result = Ok(());
    for r in 0..rounds {
        result = soak
            .round(r, max_delay)
            .map_err(|e| format!("round {r}: {e}"));
        if result.is_ok() && (r + 1) % oracle_every == 0 {
            result = soak
                .oracle()
                .map_err(|e| format!("oracle after round {r}: {e}"));
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = soak.oracle().map_err(|e| format!("final: {e}"));
    }
    if let Err(e) = result {
        let kept: PathBuf = soak.s.dir.keep();
        panic!(
            "crash soak ({path}, seed {seed}) failed; layers kept in {}:\n{e}",
            kept.display()
        );
    }
    let names: usize = soak.lanes.iter().map(|l| l.model.names.len()).sum();
    eprintln!(
        "crash soak ({path}): {rounds} rounds survived in {:.1} s (seed {seed}; {} operations completed; {names} names in {LANES} lanes, {BIGS} big files of {} MiB)\n  operations in flight at the kills: {:?}",
        start.elapsed().as_secs_f64(),
        soak.ops,
        soak.big_size >> 20,
        soak.outcomes
    );
}

#[test]
fn crash_soak_passthrough() {
    soak(true);
}

#[test]
fn crash_soak_writeback_cache() {
    soak(false);
}

/// An operation's kind, for the statistics.
fn op_name(op: &lanes::Op) -> &'static str {
    use lanes::Op::*;
    match op {
        Create(..) => "create",
        Append(..) => "append",
        Overwrite(..) => "overwrite",
        Chmod(..) => "chmod",
        Truncate(..) => "truncate",
        Rename(..) => "rename",
        Unlink(..) => "unlink",
        Link(..) => "link",
        Mkdir(..) => "mkdir",
        Rmdir(..) => "rmdir",
        Symlink(..) => "symlink",
    }
}
