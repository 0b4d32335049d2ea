//! Process life cycle: daemonizing, signals, identities.

use std::os::fd::AsRawFd;

use super::check;
use crate::errno::Result;

pub enum Fork {
    Parent(i32),
    Child,
}

/// Forks. Only sound while the process has a single thread, which is how
/// the binary calls it: before the FUSE session starts any.
pub fn fork() -> Result<Fork> {
    // SAFETY: called single-threaded (see above), so the child cannot
    // inherit a lock held by another thread.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

pub fn setsid() -> Result<()> {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Points stdin, stdout and stderr at /dev/null (a daemon's terminal may go away).
pub fn detach_stdio() -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which we own.
        check(unsafe { libc::dup2(null.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and in every thread it
/// starts later, so that they can be taken synchronously with [`wait_signal`].
pub fn block_termination_signals() -> Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        Err(crate::errno::Errno::from_raw(r))
    } else {
        Ok(())
    }
}

fn termination_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only adds to it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Waits for one of the blocked termination signals; returns its number.
pub fn wait_signal() -> i32 {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: valid set and out pointer; sigwait only fails for bad sets.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// Sends a signal to a process.
pub fn kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

pub fn getpid() -> i32 {
    // SAFETY: cannot fail.
    unsafe { libc::getpid() }
}

pub fn geteuid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::getegid() }
}

/// Hands free heap pages back to the system (glibc keeps them otherwise,
/// so a daemon that once cached a million inodes would stay that large).
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments beyond the pad; glibc locks its own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps the number of heap arenas. glibc gives each thread that finds its
/// arena busy a new one (up to eight per core), and each keeps its own
/// partly used pages: a daemon whose workers all allocate inode state
/// grows a quarter larger for nothing. Threads keep their own caches of
/// small blocks either way.
pub fn limit_heap_arenas(n: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: a plain setting; glibc ignores values it does not accept.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = n;
}

/// Whether this process holds CAP_SYS_ADMIN over the whole system (in the
/// initial user namespace), as the kernel demands for FUSE passthrough: the
/// capability inside a user namespace does not count.
pub fn has_system_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    // The initial namespace maps every id onto itself.
    let initial_ns = std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
    effective & (1 << CAP_SYS_ADMIN) != 0 && initial_ns
}
