//! What this process may do, where the union's choices depend on it.

use crate::sys::process;

/// FUSE passthrough needs CAP_SYS_ADMIN over the whole system (in the
/// initial user namespace): the kernel refuses the backing files of a
/// daemon that holds it only inside a user namespace.
pub fn may_use_passthrough() -> bool {
    process::has_system_sys_admin()
}

/// Whether `caller` is in group `gid`: its own group, or one of the
/// supplementary groups of its process (as the kernel's
/// `in_group_or_capable` asks, for the set-group-ID rules).
pub fn in_group(caller: &crate::Caller, gid: u32) -> bool {
    if caller.gid == gid || caller.uid == 0 {
        return true;
    }
    if caller.pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", caller.pid)) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}
