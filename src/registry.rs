//! `plyfs image pull|push|login` run the `plyfs-registry` executable,
//! found beside this one (then on PATH): registries need an HTTP stack
//! and an async runtime, which neither `plyfs` nor its mount daemon may
//! carry. The store and `--quiet` go along; everything else is the
//! helper's to parse.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::Failure;

const HELPER: &str = "plyfs-registry";

/// The helper: beside the running executable, else on PATH.
fn find_helper() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(HELPER)))
        .filter(|p| is_executable(p));
    beside.or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(HELPER))
            .find(|p| is_executable(p))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Replaces this process with `plyfs-registry VERB ARGS`.
pub fn exec(
    verb: &str,
    store: Option<&Path>,
    quiet: bool,
    args: &[OsString],
) -> Result<(), Failure> {
    let Some(helper) = find_helper() else {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .map_or_else(|| "its directory".to_string(), |d| d.display().to_string());
        return Err(Failure(format!(
            "plyfs image {verb} needs the {HELPER} executable, which is neither in {dir} nor on PATH (it is built and installed with plyfs)"
        )));
    };
    let mut c = Command::new(&helper);
    c.arg(verb);
    if let Some(s) = store {
        c.arg("--store").arg(s);
    }
    if quiet {
        c.arg("--quiet");
    }
    c.args(args);
    let e = c.exec();
    Err(Failure(format!("cannot run {}: {e}", helper.display())))
}
