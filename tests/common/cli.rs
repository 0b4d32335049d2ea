//! Running the plyfs binary directly, for what a mount cannot show:
//! option parsing, exit codes and messages.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

pub const PLYFS: &str = env!("CARGO_BIN_EXE_plyfs");

/// Runs the plyfs binary and returns (exit code, stdout, stderr).
pub fn plyfs(args: &[&OsStr]) -> (i32, String, String) {
    let out = Command::new(PLYFS).args(args).output().expect("run plyfs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lowerdir=a:b:...` for layer paths, top first.
pub fn lowerdir(layers: &[&Path]) -> String {
    let v: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", v.join(":"))
}
