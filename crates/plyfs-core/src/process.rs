//! What this process may do, where the union's choices depend on it.

use crate::sys::process;

/// FUSE passthrough needs CAP_SYS_ADMIN over the whole system (in the
/// initial user namespace): the kernel refuses the backing files of a
/// daemon that holds it only inside a user namespace.
pub fn may_use_passthrough() -> bool {
    process::has_system_sys_admin()
}
