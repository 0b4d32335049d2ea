//! A minimal FUSE passthrough server that speaks the kernel protocol either
//! over /dev/fuse (read/write, like libfuse and fuser) or over io_uring
//! (FUSE_OVER_IO_URING, kernel 6.14+), the same filesystem behind both, to
//! measure what the transport is worth. See benches/uring/run.sh.
//!
//! fuse-uring-bench [--mode classic|uring] [--threads N] [--depth D]
//!                  [--no-pin] [--pin-classic] [--taskrun plain|coop|defer]
//!                  BACKING MOUNTPOINT

mod abi;
mod fs;
mod sys;
mod transport;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use crate::abi::InHeader;
use crate::sys::TaskRun;

/// 1 MiB writes (max_pages 256), as plyfs negotiates through fuser.
const MAX_WRITE: usize = 1 << 20;

struct Opts {
    uring: bool,
    threads: usize,
    depth: usize,
    pin: bool,
    pin_classic: bool,
    taskrun: TaskRun,
    backing: PathBuf,
    mountpoint: PathBuf,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        uring: false,
        threads: 2,
        depth: 8,
        pin: true,
        pin_classic: false,
        taskrun: TaskRun::Defer,
        backing: PathBuf::new(),
        mountpoint: PathBuf::new(),
    };
    let mut pos = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--mode" => {
                o.uring = match val()?.as_str() {
                    "classic" => false,
                    "uring" => true,
                    m => return Err(format!("unknown mode {m}")),
                }
            }
            "--threads" => o.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--depth" => o.depth = val()?.parse().map_err(|e| format!("--depth: {e}"))?,
            "--no-pin" => o.pin = false,
            "--pin-classic" => o.pin_classic = true,
            "--taskrun" => {
                o.taskrun = match val()?.as_str() {
                    "plain" => TaskRun::Plain,
                    "coop" => TaskRun::Coop,
                    "defer" => TaskRun::Defer,
                    t => return Err(format!("unknown taskrun {t}")),
                }
            }
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [backing, mountpoint] = <[PathBuf; 2]>::try_from(pos)
        .map_err(|_| "usage: fuse-uring-bench [options] BACKING MOUNTPOINT".to_string())?;
    o.backing = backing;
    o.mountpoint = mountpoint;
    o.threads = o.threads.max(1);
    o.depth = o.depth.max(1);
    Ok(o)
}

fn possible_cpus() -> usize {
    // "0-1", "0", "0-3,5"...: the highest number plus one.
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split([',', '-'])
                .filter_map(|n| n.parse::<usize>().ok())
                .max()
        })
        .map_or(1, |m| m + 1)
}

/// Answer INIT: the flags plyfs asks for (minus readdirplus-auto,
/// passthrough and the writeback cache), plus FUSE_OVER_IO_URING when
/// asked and offered. Returns whether io_uring was negotiated.
fn init(dev: &OwnedFd, want_uring: bool) -> io::Result<bool> {
    let mut buf = vec![0u8; MAX_WRITE + 4096];
    let n = transport::read_request(dev, &mut buf)?.ok_or(io::Error::other("no INIT"))?;
    let msg = &buf[..n];
    let h = InHeader::parse(msg).ok_or(io::Error::other("short INIT"))?;
    if h.opcode != abi::INIT {
        return Err(io::Error::other(format!(
            "first request {} is not INIT",
            h.opcode
        )));
    }
    let b = &msg[abi::IN_HEADER_LEN..];
    let (major, minor) = (abi::u32_at(b, 0), abi::u32_at(b, 4));
    let max_readahead = abi::u32_at(b, 8);
    let mut kflags = u64::from(abi::u32_at(b, 12));
    if kflags & abi::INIT_EXT != 0 {
        kflags |= u64::from(abi::u32_at(b, 16)) << 32;
    }
    if major != 7 || minor < 36 {
        return Err(io::Error::other(format!(
            "kernel FUSE {major}.{minor} is too old"
        )));
    }
    let mut want = abi::ASYNC_READ
        | abi::ATOMIC_O_TRUNC
        | abi::BIG_WRITES
        | abi::DO_READDIRPLUS
        | abi::PARALLEL_DIROPS
        | abi::MAX_PAGES
        | abi::CACHE_SYMLINKS
        | abi::HANDLE_KILLPRIV_V2
        | abi::INIT_EXT;
    if want_uring {
        want |= abi::OVER_IO_URING;
    }
    let flags = kflags & want;
    let uring = flags & abi::OVER_IO_URING != 0;
    let mut o = [0u8; 64];
    abi::put_u32(&mut o, 0, 7);
    abi::put_u32(&mut o, 4, minor);
    abi::put_u32(&mut o, 8, max_readahead);
    abi::put_u32(&mut o, 12, (flags & 0xffff_ffff) as u32);
    o[16..18].copy_from_slice(&64u16.to_le_bytes()); // max_background
    o[18..20].copy_from_slice(&48u16.to_le_bytes()); // congestion_threshold
    abi::put_u32(&mut o, 20, MAX_WRITE as u32);
    abi::put_u32(&mut o, 24, 1); // time_gran
    o[28..30].copy_from_slice(&256u16.to_le_bytes()); // max_pages
    abi::put_u32(&mut o, 32, (flags >> 32) as u32);
    transport::write_reply(dev, h.unique, 0, &o)?;
    eprintln!(
        "fuse-uring-bench: FUSE 7.{minor}, kernel offers io_uring: {}, using: {}",
        kflags & abi::OVER_IO_URING != 0,
        if uring { "io_uring" } else { "/dev/fuse" }
    );
    Ok(uring)
}

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("fuse-uring-bench: cannot pin to CPU {cpu}: {e}");
    }
}

fn run(o: Opts) -> io::Result<()> {
    let fs = Arc::new(fs::Fs::new(&o.backing)?);
    let dev: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    );
    rustix::mount::mount(
        "fuse-uring-bench",
        &o.mountpoint,
        "fuse.fuse-uring-bench",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOATIME,
        Some(std::ffi::CString::new(data)?.as_c_str()),
    )?;
    let dev = Arc::new(dev);
    let uring = init(&dev, o.uring)?;
    let buf_len = MAX_WRITE + 4096;
    let mut threads = Vec::new();
    // Over io_uring, FORGET and INTERRUPT still come through /dev/fuse.
    let classic_threads = if uring { 1 } else { o.threads };
    let ncpu = possible_cpus();
    for i in 0..classic_threads {
        let (fs, dev) = (fs.clone(), dev.clone());
        let pin = o.pin_classic;
        threads.push(
            std::thread::Builder::new()
                .name(format!("classic-{i}"))
                .spawn(move || {
                    if pin {
                        pin_to(i % ncpu);
                    }
                    transport::classic(&fs, &dev, buf_len)
                })?,
        );
    }
    if uring {
        for cpu in 0..ncpu {
            let (fs, dev) = (fs.clone(), dev.clone());
            let (depth, taskrun, pin) = (o.depth, o.taskrun, o.pin);
            let qid = u16::try_from(cpu).map_err(io::Error::other)?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ring-{cpu}"))
                    .spawn(move || {
                        if pin {
                            pin_to(cpu);
                        }
                        transport::ring(&fs, dev, qid, depth, MAX_WRITE, taskrun)
                    })?,
            );
        }
    }
    let mut result = Ok(());
    let mut counts = Vec::new();
    for t in threads {
        let name = t.thread().name().unwrap_or("?").to_string();
        match t.join() {
            Ok(Ok(n)) => counts.push(format!("{name} {n}")),
            Ok(Err(e)) => {
                eprintln!("fuse-uring-bench: {e}");
                result = Err(e);
            }
            Err(_) => result = Err(io::Error::other("a thread panicked")),
        }
    }
    eprintln!("fuse-uring-bench: requests served: {}", counts.join(", "));
    result
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(o) {
        eprintln!("fuse-uring-bench: {e}");
        std::process::exit(1);
    }
}
