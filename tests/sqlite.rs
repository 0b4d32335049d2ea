//! An SQLite database in WAL mode (as rpm keeps its database) in a lower
//! layer, copied up and rewritten by four processes at once: inserts and
//! deletes in transactions, checkpoints, the `-shm` index shared between
//! them through mmap. A userspace overlay that loses a write of a shared
//! mapping, or serves a stale page, corrupts it. After each run:
//! `PRAGMA integrity_check`, and row counts that every committed
//! transaction accounts for. Both data paths; also with the daemon
//! killed (SIGKILL) mid-run, after which every transaction a worker saw
//! commit must be there after a remount.
//!
//! The workers are Python's sqlite3 module (the system's libsqlite3), so
//! that each commit is reported the moment it returns.
//!
//! Soak: `PLYFS_SQLITE_SECONDS=300 cargo test --release --test sqlite --
//! --nocapture` runs database runs for that long, both data paths, half
//! of them with a kill.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::lanes::Rng;
use common::*;

const WORKERS: usize = 4;
/// Rows of the lower database; each has 1,000 random bytes.
fn base_rows() -> u64 {
    std::env::var("PLYFS_SQLITE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(40)
        * 1000
}

const WORKER: &str = r#"
import sqlite3, sys
db, w, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
con = sqlite3.connect(db, timeout=300, isolation_level=None)
con.execute("PRAGMA synchronous=FULL")
assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
for i in range(first, first + n):
    con.execute("BEGIN IMMEDIATE")
    for j in range(5):
        con.execute("INSERT INTO t(worker, seq, payload) VALUES (?, ?, randomblob(2000))", (w, i))
    con.execute("DELETE FROM t WHERE id IN (SELECT id FROM t WHERE worker = -1 AND id % 4 = ? ORDER BY id LIMIT 3)", (w,))
    con.execute("INSERT INTO log VALUES (?, ?)", (w, i))
    con.execute("COMMIT")
    print(i, flush=True)
    if i % 16 == 15:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)" if w == 0 else "PRAGMA wal_checkpoint(PASSIVE)")
"#;

const VERIFY: &str = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=300)
print(con.execute("PRAGMA integrity_check").fetchone()[0])
print(con.execute("SELECT count(*) FROM t WHERE worker = -1").fetchone()[0])
for w in range(4):
    print(con.execute("SELECT count(*) FROM t WHERE worker = ?", (w,)).fetchone()[0],
          ",".join(str(r[0]) for r in con.execute("SELECT seq FROM log WHERE worker = ? ORDER BY seq", (w,))))
"#;

fn python(script: &str, args: &[String]) -> Command {
    let mut c = Command::new("python3");
    c.arg("-c").arg(script).args(args);
    c
}

/// The lower database: `base` rows of 1,000 bytes, in WAL mode.
fn make_db(path: &Path, base: u64) {
    let script = format!(
        "import sqlite3,sys\n\
         con = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
         con.execute('PRAGMA journal_mode=WAL')\n\
         con.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, worker INT, seq INT, payload BLOB)')\n\
         con.execute('CREATE TABLE log(worker INT, seq INT, PRIMARY KEY(worker, seq))')\n\
         con.execute('CREATE INDEX tw ON t(worker, seq)')\n\
         con.execute('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {base}) \
         INSERT INTO t(worker, seq, payload) SELECT -1, x, randomblob(1000) FROM c')\n\
         con.close()\n"
    );
    let st = python(&script, &[path.display().to_string()])
        .status()
        .expect("python3");
    assert!(st.success(), "making the database");
}

/// What the database says after a run.
#[derive(Debug)]
struct State {
    lower_rows: u64,
    /// Per worker: its rows, and the transactions its log records.
    workers: Vec<(u64, BTreeSet<u64>)>,
}

fn read_state(db: &Path) -> Result<State, String> {
    let out = python(VERIFY, &[db.display().to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "reading {}: {}{text}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut lines = text.lines();
    let integrity = lines.next().unwrap_or("");
    if integrity != "ok" {
        return Err(format!("integrity_check of {}: {text}", db.display()));
    }
    let lower_rows = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or("no row count")?;
    let mut workers = Vec::new();
    for l in lines {
        let (rows, seqs) = l.split_once(' ').unwrap_or((l, ""));
        let seqs = seqs
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| format!("bad log line {l}")))
            .collect::<Result<BTreeSet<u64>, String>>()?;
        workers.push((rows.parse().map_err(|_| format!("bad line {l}"))?, seqs));
    }
    Ok(State {
        lower_rows,
        workers,
    })
}

impl State {
    /// Every transaction is all there or not at all: each logged one has
    /// its five rows and took three of the lower's.
    fn consistent(&self, base: u64) -> Result<u64, String> {
        let txs: u64 = self.workers.iter().map(|(_, s)| s.len() as u64).sum();
        for (w, (rows, seqs)) in self.workers.iter().enumerate() {
            if *rows != 5 * seqs.len() as u64 {
                return Err(format!(
                    "worker {w}: {rows} rows for {} transactions",
                    seqs.len()
                ));
            }
        }
        if self.lower_rows != base - 3 * txs {
            return Err(format!(
                "{} lower rows left after {txs} transactions, expected {}",
                self.lower_rows,
                base - 3 * txs
            ));
        }
        Ok(txs)
    }
}

struct Worker {
    child: Child,
    committed: std::thread::JoinHandle<Vec<u64>>,
}

/// `seen` counts the commits reported, as they come.
fn start_workers(db: &Path, first: &[u64], n: u64, seen: &Arc<AtomicU64>) -> Vec<Worker> {
    (0..WORKERS)
        .map(|w| {
            let mut child = python(
                WORKER,
                &[
                    db.display().to_string(),
                    w.to_string(),
                    first[w].to_string(),
                    n.to_string(),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
            let out = child.stdout.take().expect("stdout");
            let seen = seen.clone();
            let committed = std::thread::spawn(move || {
                BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| l.trim().parse().ok())
                    .inspect(|_| {
                        seen.fetch_add(1, Ordering::SeqCst);
                    })
                    .collect()
            });
            Worker { child, committed }
        })
        .collect()
}

/// Waits for the workers: what each saw commit, and whether all ended well.
fn finish(workers: Vec<Worker>) -> (Vec<Vec<u64>>, Vec<String>) {
    let mut committed = Vec::new();
    let mut errors = Vec::new();
    for (w, mut wk) in workers.into_iter().enumerate() {
        let status = wk.child.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = wk.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        if !status.success() {
            let last = err.lines().last().unwrap_or("").to_string();
            errors.push(format!("worker {w}: {status}: {last}"));
        }
        committed.push(wk.committed.join().unwrap_or_default());
    }
    (committed, errors)
}

struct Run {
    s: Scratch,
    passthrough: bool,
    base: u64,
}

impl Run {
    fn new(passthrough: bool, lower: &Path, base: u64) -> Run {
        let s = Scratch::new();
        std::os::unix::fs::symlink(lower, s.path("lower")).expect("lower link");
        s.mkdir("upper");
        s.mkdir("work");
        Run {
            s,
            passthrough,
            base,
        }
    }

    fn mount(&self) -> Result<PlyfsMount, String> {
        let mut o = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.s.path("lower").display(),
            self.s.path("upper").display(),
            self.s.path("work").display()
        );
        if !self.passthrough {
            o.push_str(",passthrough=0");
        }
        PlyfsMount::try_new(&o, &self.s.path("mnt"))
    }

    fn db(&self) -> PathBuf {
        self.s.path("mnt/rpm/rpmdb.sqlite")
    }

    /// Four writers to the end; returns the transactions committed.
    fn clean(&self, n: u64) -> Result<u64, String> {
        let ply = self.mount()?;
        let seen = Arc::new(AtomicU64::new(0));
        let (committed, errors) = finish(start_workers(&self.db(), &[0; WORKERS], n, &seen));
        if !errors.is_empty() {
            return Err(errors.join("\n"));
        }
        let st = read_state(&self.db())?;
        let txs = st.consistent(self.base)?;
        let want: u64 = committed.iter().map(|c| c.len() as u64).sum();
        if txs != want || want != n * WORKERS as u64 {
            return Err(format!(
                "{txs} transactions in the database, {want} committed"
            ));
        }
        drop(ply);
        self.upper_reads_the_same(txs)?;
        Ok(txs)
    }

    /// Writers, a kill at a random moment, a remount: every transaction
    /// seen to commit is there, and the writers carry on.
    fn killed(&self, n: u64, rng: &mut Rng) -> Result<(u64, u64), String> {
        let ply = self.mount()?;
        let seen = Arc::new(AtomicU64::new(0));
        let workers = start_workers(&self.db(), &[0; WORKERS], n, &seen);
        // Killed once some transactions are in (a random number of them,
        // never all), a little after the last: mid-transaction or between.
        let target = 1 + rng.below(n * WORKERS as u64 / 2);
        let start = Instant::now();
        while seen.load(Ordering::SeqCst) < target && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.below(20)));
        plyfs_sys::process::kill(ply.pid() as i32, libc::SIGKILL).map_err(|e| e.to_string())?;
        let (committed, _) = finish(workers);
        let before_kill: u64 = committed.iter().map(|c| c.len() as u64).sum();
        drop(ply);
        let (code, out, err) = plyfs(&[
            "check".as_ref(),
            self.s.path("upper").as_os_str(),
            "--lowerdir".as_ref(),
            self.s.path("lower").as_os_str(),
            "--work".as_ref(),
            self.s.path("work").as_os_str(),
            "--repair".as_ref(),
        ]);
        if code > 1 || out.lines().any(|l| !l.starts_with("leftover:")) {
            return Err(format!(
                "plyfs check after the kill (exit {code}):\n{out}{err}"
            ));
        }
        let ply = self.mount()?;
        let st = read_state(&self.db())?;
        st.consistent(self.base)?;
        for (w, seen) in committed.iter().enumerate() {
            let lost: Vec<&u64> = seen
                .iter()
                .filter(|i| !st.workers[w].1.contains(i))
                .collect();
            if !lost.is_empty() {
                return Err(format!(
                    "worker {w}: committed transactions lost by the kill: {lost:?}"
                ));
            }
        }
        // The survivors carry on after the crash.
        let first: Vec<u64> = st
            .workers
            .iter()
            .map(|(_, s)| s.last().map_or(0, |l| l + 1))
            .collect();
        let (_, errors) = finish(start_workers(&self.db(), &first, n / 2, &seen));
        if !errors.is_empty() {
            return Err(format!("after the remount: {}", errors.join("\n")));
        }
        let txs = read_state(&self.db())?.consistent(self.base)?;
        drop(ply);
        self.upper_reads_the_same(txs)?;
        Ok((before_kill, txs))
    }

    /// The upper's copy, read without plyfs, is the same database.
    fn upper_reads_the_same(&self, txs: u64) -> Result<(), String> {
        let st = read_state(&self.s.path("upper/rpm/rpmdb.sqlite"))
            .map_err(|e| format!("the upper's copy: {e}"))?;
        let direct = st.consistent(self.base)?;
        if direct != txs {
            return Err(format!(
                "the upper's copy has {direct} transactions, the mount showed {txs}"
            ));
        }
        Ok(())
    }
}

fn lower_db(s: &Scratch, base: u64) -> PathBuf {
    let lower = s.mkdir("lower");
    std::fs::create_dir_all(lower.join("rpm")).expect("mkdir");
    make_db(&lower.join("rpm/rpmdb.sqlite"), base);
    let size = std::fs::metadata(lower.join("rpm/rpmdb.sqlite"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(size > base * 1000, "the database is {size} bytes");
    lower
}

fn one_path(passthrough: bool) {
    if !require_mount_privileges() {
        return;
    }
    let base = base_rows();
    let s = Scratch::new();
    let lower = lower_db(&s, base);
    let n = 40;
    let path = if passthrough {
        "passthrough"
    } else {
        "writeback"
    };
    let txs = Run::new(passthrough, &lower, base)
        .clean(n)
        .unwrap_or_else(|e| panic!("{path}, clean run: {e}"));
    let mut rng = Rng::new(std::process::id() as u64);
    let (before_kill, after_kill) = Run::new(passthrough, &lower, base)
        .killed(n, &mut rng)
        .unwrap_or_else(|e| panic!("{path}, run with a kill: {e}"));
    eprintln!(
        "sqlite ({path}): {txs} transactions clean; {before_kill} committed before a kill, all there after it, {after_kill} in all"
    );
}

#[test]
fn wal_database_rewritten_by_four_processes_passthrough() {
    one_path(true);
}

#[test]
fn wal_database_rewritten_by_four_processes_writeback_cache() {
    one_path(false);
}

/// The soak: database runs for PLYFS_SQLITE_SECONDS, alternating data
/// paths, every other run with a kill.
#[test]
fn wal_database_soak() {
    let Some(secs) = std::env::var("PLYFS_SQLITE_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if !require_mount_privileges() {
        return;
    }
    let base = base_rows();
    let s = Scratch::new();
    let lower = lower_db(&s, base);
    let mut rng = Rng::new(std::process::id() as u64);
    let start = Instant::now();
    let (mut runs, mut kills, mut txs) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        let passthrough = runs % 2 == 0;
        let kill = (runs / 2) % 2 == 1;
        let run = Run::new(passthrough, &lower, base);
        let n = 100 + rng.below(200);
        let r = if kill {
            run.killed(n, &mut rng).map(|(_, t)| t)
        } else {
            run.clean(n)
        };
        match r {
            Ok(t) => txs += t,
            Err(e) => {
                let kept = run.s.dir.keep();
                panic!(
                    "run {runs} ({}, {}): {e}\nkept in {}",
                    if passthrough {
                        "passthrough"
                    } else {
                        "writeback"
                    },
                    if kill { "killed" } else { "clean" },
                    kept.display()
                );
            }
        }
        runs += 1;
        kills += u64::from(kill);
    }
    eprintln!(
        "sqlite soak: {runs} database runs ({kills} with a kill) in {:.0} s, {txs} transactions, all intact",
        start.elapsed().as_secs_f64()
    );
}
