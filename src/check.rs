//! `plyfs check UPPER`: an upper layer checked offline, and with
//! `--repair` repaired where that is safe. Lists each finding on stdout,
//! a summary on stderr; the exit code says what is left, as fsck's does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use plyfs_core::check::{self, CheckOptions, Severity};

use crate::image::{LowerArgs, StoreArgs, upper_context};

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The upper directory (of a mount that has ended).
    upper: PathBuf,
    #[command(flatten)]
    lowers: LowerArgs,
    /// Repair what can be repaired without changing what a mount shows:
    /// leftovers of interrupted changes, orphaned index entries, whiteouts
    /// inside opaque directories, marker values nobody can read, missing
    /// impure and xattr-whiteout marks.
    #[arg(long)]
    repair: bool,
}

/// Nothing left that a mount misreads (leftovers and notes may be listed).
const CLEAN: u8 = 0;
/// Something was repaired, and nothing that matters is left.
const REPAIRED: u8 = 1;
/// Defects are left.
const DEFECTS: u8 = 4;
/// The check could not run.
const FAILED: u8 = 8;

pub fn run(a: CheckArgs) -> ExitCode {
    let (lowers, work) = match upper_context(&a.store, &a.lowers, &a.upper) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("plyfs: {e}");
            return ExitCode::from(FAILED);
        }
    };
    let opts = CheckOptions {
        upper: a.upper.clone(),
        lowers,
        work,
        repair: a.repair,
    };
    let report = match check::check(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plyfs: check: {e}");
            return ExitCode::from(FAILED);
        }
    };
    for f in &report.findings {
        println!("{f}");
    }
    let (defects, leftovers, notes) = (
        report.left(Severity::Defect),
        report.left(Severity::Leftover),
        report.left(Severity::Note),
    );
    eprintln!(
        "plyfs check: {} objects{}: {defects} defect(s), {leftovers} leftover(s), {notes} note(s) left, {} repaired",
        report.objects,
        if report.with_lowers {
            ""
        } else {
            " (without the lowers: redirects, metacopy data and whiteouts not checked against them)"
        },
        report.repaired(),
    );
    ExitCode::from(if defects > 0 {
        DEFECTS
    } else if report.repaired() > 0 {
        REPAIRED
    } else {
        CLEAN
    })
}
