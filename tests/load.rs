//! Load and resources: 16 processes of mixed work for a bounded time —
//! files of their own (every result checked), lower files copied up,
//! names fought over (only the errnos such races give), a directory of
//! 100,000 entries listed while it changes, linkers writing thousands of
//! outputs through mmap. No deadlock; the daemon's descriptors and memory
//! stay flat (it runs with a low descriptor limit, so a leak shows as
//! EMFILE); its inode table shrinks when the kernel drops its caches.
//! And SIGTERM under load: a clean unmount once the last user lets go,
//! nothing fsync'ed lost, a clean next mount.
//!
//! `PLYFS_LOAD_SECONDS=300 cargo test --release --test load -- --nocapture`
//! is the soak (10 seconds by default).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lanes::Rng;
use common::loadwork::{self, LOWER_FILES};
use common::*;

const MIXED: usize = 10;
const LISTERS: usize = 2;
const LINKERS: usize = 2;
/// Names of the large directory nobody changes, and those the changer may.
const BIG_DIR: usize = 100_000;
const CHANGEABLE: usize = 1000;
/// The daemon's descriptor limit for the run.
const NOFILE: u64 = 4096;

fn seconds() -> u64 {
    std::env::var("PLYFS_LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// The body of a worker process: `PLYFS_LOAD_WORKER=kind:id:root:seconds`.
/// Prints its operation count; fails with the first unexpected result.
#[test]
fn load_worker() {
    let Ok(spec) = std::env::var("PLYFS_LOAD_WORKER") else {
        return;
    };
    let parts: Vec<&str> = spec.splitn(4, ':').collect();
    let [kind, id, secs, root] = parts[..] else {
        panic!("bad worker spec {spec}");
    };
    let id: usize = id.parse().expect("id");
    let until = Instant::now() + Duration::from_secs(secs.parse().expect("seconds"));
    let root = Path::new(root);
    let mut rng = Rng::new(std::process::id() as u64 ^ (id as u64) << 32);
    let r = match kind {
        "mixed" => loadwork::mixed(root, id, until, &mut rng),
        "lister" => loadwork::lister(&root.join("big"), BIG_DIR, until),
        "changer" => loadwork::changer(&root.join("big"), CHANGEABLE, until, &mut rng),
        "writer" => writer(root, id, until),
        _ => Err(format!("unknown worker {kind}")),
    };
    match r {
        Ok(ops) => println!("ops {ops}"),
        Err(e) => {
            eprintln!("{kind} {id}: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes files and fsyncs them, printing each name once it is durable
/// (the SIGTERM test). Works relative to its directory: after the mount
/// is detached it goes on through the same union.
fn writer(_root: &Path, id: usize, until: Instant) -> Result<u64, String> {
    use std::io::Write;
    let mut n = 0;
    while Instant::now() < until {
        let name = format!("w{id}-{n}");
        let r = std::fs::File::create(&name).and_then(|mut f| {
            f.write_all(name.as_bytes())?;
            f.sync_all()
        });
        match r {
            Ok(()) => println!("{name}"),
            // The union is gone: the test ends us anyway.
            Err(e) => return Err(format!("{name}: {e}")),
        }
        n += 1;
    }
    Ok(n)
}

fn spawn_worker(kind: &str, id: usize, secs: u64, root: &Path, cwd: Option<&Path>) -> Child {
    let mut c = Command::new(std::env::current_exe().expect("test binary"));
    c.args([
        "--exact",
        "load_worker",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(
        "PLYFS_LOAD_WORKER",
        format!("{kind}:{id}:{secs}:{}", root.display()),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.spawn().expect("worker")
}

/// (descriptors, resident KiB) of a process.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    (fds, rss)
}

/// Held while a test measures what the kernel keeps cached.
static CACHES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn drop_caches() {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
    std::thread::sleep(Duration::from_secs(1));
}

/// Waits for every worker (killing those past `deadline`): failures, and
/// the operations the others did.
fn collect(workers: Vec<(String, Child)>, deadline: Instant) -> (u64, Vec<String>) {
    let mut ops = 0;
    let mut failures = Vec::new();
    for (name, mut c) in workers {
        while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if c.try_wait().ok().flatten().is_none() {
            let _ = c.kill();
            failures.push(format!("{name}: still running at the deadline (deadlock?)"));
        }
        let out = c.wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout);
        ops += text
            .lines()
            // The harness of a worker process prints its own words on
            // the same line as the count.
            .filter_map(|l| l.rsplit("ops ").next()?.trim().parse::<u64>().ok())
            .sum::<u64>();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let why = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty() && !l.starts_with("test "))
                .unwrap_or("")
                .to_string();
            failures.push(format!("{name}: {}: {why}", out.status));
        }
    }
    (ops, failures)
}

fn build_lower(s: &Scratch) -> PathBuf {
    let lower = s.mkdir("lower");
    for w in 0..MIXED {
        let d = lower.join(format!("lower/w{w}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        for i in 0..LOWER_FILES {
            std::fs::write(d.join(format!("l{i}")), loadwork::lower_content(w, i)).expect("write");
        }
    }
    std::fs::create_dir_all(lower.join("shared")).expect("mkdir");
    let big = lower.join("big");
    std::fs::create_dir_all(&big).expect("mkdir");
    for i in 0..BIG_DIR {
        std::fs::File::create(big.join(format!("f{i}"))).expect("create");
    }
    for i in 0..CHANGEABLE {
        std::fs::File::create(big.join(format!("g{i}"))).expect("create");
    }
    // A tree to walk for the inode table.
    for d in 0..200 {
        let sub = lower.join(format!("tree/d{d}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        for f in 0..100 {
            std::fs::File::create(sub.join(format!("f{f}"))).expect("create");
        }
    }
    lower
}

fn load(passthrough: bool) {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let lower = build_lower(&s);
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        s.mkdir("upper").display(),
        s.mkdir("work").display()
    );
    if !passthrough {
        opts.push_str(",passthrough=0");
    }
    let ply = PlyfsMount::new(&opts, &s.path("mnt"));
    let pid = ply.pid();
    // A low limit, so that descriptors kept per open file run out fast.
    let limited = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(limited, "prlimit of the daemon");
    let secs = seconds();
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..MIXED {
        workers.push((
            format!("mixed {w}"),
            spawn_worker("mixed", w, secs, &ply.mnt, None),
        ));
    }
    for l in 0..LISTERS {
        workers.push((
            format!("lister {l}"),
            spawn_worker("lister", l, secs, &ply.mnt, None),
        ));
    }
    workers.push((
        "changer".into(),
        spawn_worker("changer", 0, secs, &ply.mnt, None),
    ));
    for k in 0..LINKERS {
        let c = Command::new("python3")
            .args(["-c", loadwork::LINKER])
            .arg(ply.mnt.join(format!("out{k}")))
            .arg(secs.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        workers.push((format!("linker {k}"), c));
    }
    // A reader of everything: the sixteenth.
    let reader = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "end=$(( $(date +%s) + {secs} )); n=0; while [ $(date +%s) -lt $end ]; do \
             find {} -path '*/big' -prune -o -type f -print0 | xargs -0 cat >/dev/null 2>&1; n=$((n+1)); done; echo $n",
            ply.mnt.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    workers.push(("reader".into(), reader));
    assert_eq!(workers.len(), 16);
    // Descriptors and memory, once a second; the first quarter warms up.
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(usage(pid));
    }
    let (ops, failures) = collect(workers, start + Duration::from_secs(secs + 120));
    let path = if passthrough {
        "passthrough"
    } else {
        "writeback"
    };
    assert!(failures.is_empty(), "{path}: {}", failures.join("\n"));
    let warm = samples[samples.len() / 4];
    let peak = samples
        .iter()
        .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
    let end = usage(pid);
    eprintln!(
        "load ({path}): 16 processes x {secs} s, {ops} operations; daemon descriptors {} warm, {} peak, {} at the end; RSS {} KiB warm, {} peak, {} at the end",
        warm.0, peak.0, end.0, warm.1, peak.1, end.1
    );
    assert!(
        peak.0 < warm.0 * 2 + 256 && end.0 <= warm.0 + 256,
        "descriptors grew: {warm:?} warm, {peak:?} peak, {end:?} at the end"
    );
    assert!(
        end.1 < warm.1 * 2 + 64 * 1024,
        "memory grew: {warm:?} warm, {end:?} at the end"
    );
    // The inode table: a walk caches 20,000 more, and the kernel's
    // forgetting them gives back their descriptors and memory. Another
    // test's drop_caches in the middle would empty the walked cache: one
    // at a time.
    let _only = CACHES.lock().unwrap_or_else(|e| e.into_inner());
    drop_caches();
    let before_walk = usage(pid);
    let n = walkdir_count(&ply.mnt.join("tree"));
    let walked = usage(pid);
    drop_caches();
    let dropped = usage(pid);
    eprintln!(
        "inode table ({path}): {n} objects walked; descriptors {} -> {} -> {} after drop_caches; RSS {} -> {} -> {} KiB",
        before_walk.0, walked.0, dropped.0, before_walk.1, walked.1, dropped.1
    );
    assert!(
        walked.0 >= before_walk.0 + 150,
        "a walk of 200 directories caches them"
    );
    assert!(
        dropped.0 <= before_walk.0 + 20 && dropped.1 < walked.1,
        "the inode table did not shrink: {walked:?} walked, {dropped:?} after drop_caches"
    );
}

fn walkdir_count(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir") {
            let e = e.expect("entry");
            let md = std::fs::symlink_metadata(e.path()).expect("stat");
            n += 1;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

#[test]
fn sixteen_processes_passthrough() {
    load(true);
}

#[test]
fn sixteen_processes_writeback_cache() {
    load(false);
}

/// SIGTERM while writers work inside the mount: it is detached at once,
/// served until the last of them lets go, and then the daemon ends on its
/// own; every file a writer fsync'ed is in the upper, the work directory
/// is empty, and the upper checks clean.
#[test]
fn sigterm_under_load() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("lower")).file("keep", "lower");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.path("lower").display(),
        s.mkdir("upper").display(),
        s.mkdir("work").display()
    );
    let mut ply = PlyfsMount::new(&opts, &s.path("mnt"));
    let mut writers = Vec::new();
    for w in 0..8 {
        let dir = ply.mnt.join(format!("d{w}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let mut c = spawn_worker("writer", w, 3, &ply.mnt, Some(&dir));
        let out = c.stdout.take().expect("stdout");
        let names = std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with('w'))
                .collect::<Vec<_>>()
        });
        writers.push((w, c, names));
    }
    std::thread::sleep(Duration::from_millis(1000));
    plyfs_sys::process::kill(ply.pid() as i32, libc::SIGTERM).expect("SIGTERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!is_mounted(&ply.mnt), "SIGTERM detaches the mount");
    let mut durable = Vec::new();
    for (w, mut c, names) in writers {
        let st = c.wait().expect("wait");
        assert!(st.success(), "writer {w}: {st}");
        durable.extend(names.join().expect("names").into_iter().map(|n| (w, n)));
    }
    let (status, err) = ply
        .wait_exit(Duration::from_secs(30))
        .expect("the daemon ends once the last user lets go");
    assert!(status.success(), "daemon: {status}: {err}");
    assert!(durable.len() > 8, "the writers wrote: {}", durable.len());
    for (w, name) in &durable {
        let p = s.path(&format!("upper/d{w}/{name}"));
        assert_eq!(
            std::fs::read_to_string(&p).unwrap_or_default(),
            *name,
            "{} lost",
            p.display()
        );
    }
    assert_eq!(
        std::fs::read_dir(s.path("work/work"))
            .expect("work")
            .count(),
        0,
        "work/work empty after a clean end"
    );
    let (code, out, err) = plyfs(&[
        "check".as_ref(),
        s.path("upper").as_os_str(),
        "--lowerdir".as_ref(),
        s.path("lower").as_os_str(),
        "--work".as_ref(),
        s.path("work").as_os_str(),
    ]);
    assert!(
        code == 0 && out.is_empty(),
        "check after SIGTERM (exit {code}): {out}{err}"
    );
    let ply = PlyfsMount::new(&opts, &s.path("mnt"));
    let back = durable
        .iter()
        .filter(|(w, n)| ply.mnt.join(format!("d{w}/{n}")).exists())
        .count();
    assert_eq!(back, durable.len());
    eprintln!(
        "SIGTERM under load: {} fsync'ed files by 8 writers, all there",
        durable.len()
    );
}
