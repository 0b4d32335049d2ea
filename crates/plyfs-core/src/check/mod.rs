//! Checking an upper layer offline (`plyfs check`): what a crash, another
//! tool or a hand edit can leave that a mount would misread or the
//! kernel's overlayfs would refuse, and repairing what can be repaired
//! without changing what any mount shows.
//!
//! The upper is walked directly, its markers read raw (`markers::audit`);
//! where the lowers are given, each entry is also looked up through a
//! read-only union of them, so that redirects, metacopy files and
//! whiteouts are judged exactly as a mount resolves them.
//!
//! Repairs are limited to what is safe whatever the lowers are: removing
//! a crash's unfinished objects from `work/`, orphaned index entries,
//! whiteouts inside opaque directories (they hide nothing), values no
//! reader can use (unparsable link counts and origins), and adding the
//! hints a crash between two steps may have left out (`impure`, the mark
//! of a directory holding xattr whiteouts). Anything whose repair would
//! need a judgement — a redirect to nowhere, a metacopy file without data
//! — is reported only.

mod upper;
mod work;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Errno, SetupError};
use crate::sys::fs;
use crate::{Config, Overlay};

/// What to check.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub upper: PathBuf,
    /// The lowers the upper was mounted over, top first; without them the
    /// checks that need them (redirect targets, metacopy data, whether a
    /// whiteout hides anything) are skipped.
    pub lowers: Vec<PathBuf>,
    /// The work directory of the upper's mounts.
    pub work: Option<PathBuf>,
    /// Repair what is safe to repair.
    pub repair: bool,
}

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// A mount misreads it, or the kernel's overlayfs refuses it.
    Defect,
    /// What a crash leaves and the next mount clears.
    Leftover,
    /// Harmless: nothing any mount shows depends on it.
    Note,
}

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// An object in `work/`: a copy-up or change a crash interrupted.
    StrayWork,
    /// An index entry no name of the union uses any more.
    OrphanIndex,
    /// An index entry whose name is no file handle: the kernel refuses to
    /// mount with it.
    BadIndexName,
    /// An index entry whose origin does not match its name: the kernel
    /// discards it at mount, and names of it only in the lowers lose the
    /// changed copy.
    IndexOriginMismatch,
    /// A whiteout inside an opaque directory.
    WhiteoutInOpaque,
    /// A whiteout where no lower has the name.
    UnneededWhiteout,
    /// An xattr whiteout in a directory not marked as holding any: lookup
    /// takes it for a whiteout, a listing for a file.
    UnmarkedXattrWhiteout,
    /// A marker whose value does not parse (named in the detail).
    BadValue,
    /// Same, but no reader uses the value: it can go.
    UselessValue,
    /// A directory holding copies with origins, not marked impure: their
    /// inode numbers in listings (and hard links' shared numbers) are
    /// wrong.
    MissingImpure,
    /// A redirected directory whose redirect leads to nothing in the
    /// lowers.
    DanglingRedirect,
    /// A metacopy file whose data is in no lower.
    MetacopyWithoutData,
    /// The union cannot look the object up (the detail says why).
    Unreadable,
}

impl Problem {
    pub fn severity(self) -> Severity {
        match self {
            Problem::StrayWork | Problem::OrphanIndex => Severity::Leftover,
            Problem::UnneededWhiteout | Problem::WhiteoutInOpaque => Severity::Note,
            _ => Severity::Defect,
        }
    }

    /// The repair, where one is safe.
    fn repairable(self) -> bool {
        matches!(
            self,
            Problem::StrayWork
                | Problem::OrphanIndex
                | Problem::BadIndexName
                | Problem::WhiteoutInOpaque
                | Problem::UnmarkedXattrWhiteout
                | Problem::UselessValue
                | Problem::MissingImpure
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            Problem::StrayWork => "unfinished object of an interrupted change (a mount removes it)",
            Problem::OrphanIndex => "index entry of a hard link whose every name is gone",
            Problem::BadIndexName => {
                "index entry whose name is no file handle (the kernel refuses to mount)"
            }
            Problem::IndexOriginMismatch => {
                "index entry whose origin does not match its name (the kernel discards it)"
            }
            Problem::WhiteoutInOpaque => "whiteout inside an opaque directory (it hides nothing)",
            Problem::UnneededWhiteout => "whiteout of a name no lower has",
            Problem::UnmarkedXattrWhiteout => {
                "xattr whiteout in a directory not marked as holding any (listings show it as a file)"
            }
            Problem::BadValue | Problem::UselessValue => "marker value",
            Problem::MissingImpure => {
                "directory holds copied-up entries but is not marked impure (listings show wrong inode numbers)"
            }
            Problem::DanglingRedirect => "redirect to a directory no lower has",
            Problem::MetacopyWithoutData => "metacopy file whose data is in no lower (reads fail)",
            Problem::Unreadable => "cannot be looked up through the union",
        }
    }
}

/// One thing found.
#[derive(Clone, Debug)]
pub struct Finding {
    pub path: PathBuf,
    pub problem: Problem,
    /// More about it (which attribute, which value, which errno).
    pub detail: Option<String>,
    pub repaired: bool,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.problem.severity() {
            Severity::Defect => "defect",
            Severity::Leftover => "leftover",
            Severity::Note => "note",
        };
        write!(
            f,
            "{sev}: {}: {}",
            self.path.display(),
            self.problem.describe()
        )?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        if self.repaired {
            f.write_str(" [repaired]")?;
        }
        Ok(())
    }
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Objects of the upper looked at.
    pub objects: u64,
    /// Whether the lowers were there to check against.
    pub with_lowers: bool,
}

impl Report {
    /// Findings of `sev` not repaired.
    pub fn left(&self, sev: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| !f.repaired && f.problem.severity() == sev)
            .count()
    }

    pub fn repaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired).count()
    }
}

/// Why a check could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{}: {errno}", path.display())]
    Io { path: PathBuf, errno: Errno },
    #[error("{} is in use by a mount; unmount it first", path.display())]
    InUse { path: PathBuf },
    #[error(transparent)]
    Setup(#[from] SetupError),
}

type Result<T> = std::result::Result<T, CheckError>;

/// Checks (and with `repair`, repairs) an upper that no mount uses.
pub fn check(opts: &CheckOptions) -> Result<Report> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |errno| CheckError::Io {
            path: path.clone(),
            errno,
        }
    };
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    let root = fs::open_path(&opts.upper, flags).map_err(io(&opts.upper))?;
    let work_root = match &opts.work {
        Some(w) => Some(fs::open_path(w, flags).map_err(io(w))?),
        None => None,
    };
    // A mount holds both locked for its life: what is in work/ then is
    // a change in progress, not a crash's leftover. Holding them also
    // keeps a mount from starting while the check repairs.
    let _locks = [
        Some(lock(&opts.upper, root.as_fd())?),
        match (&opts.work, &work_root) {
            (Some(p), Some(fd)) => Some(lock(p, fd.as_fd())?),
            _ => None,
        },
    ];
    let union = if opts.lowers.is_empty() {
        None
    } else {
        Some(Overlay::new(Config {
            lowers: opts.lowers.clone(),
            upper: Some(opts.upper.clone()),
            work: opts.work.clone(),
            read_only: true,
            ..Config::default()
        })?)
    };
    let mut report = Report {
        with_lowers: union.is_some(),
        ..Report::default()
    };
    let mut out = Out {
        repair: opts.repair,
        report: &mut report,
    };
    upper::walk(&mut out, &opts.upper, root, union.as_ref())?;
    if let (Some(path), Some(fd)) = (&opts.work, &work_root) {
        work::check_work(&mut out, path, fd.as_fd())?;
    }
    Ok(report)
}

/// Locks a directory as a mount locks it; a held lock is a live mount.
fn lock(path: &Path, dir: BorrowedFd<'_>) -> Result<OwnedFd> {
    let io = |errno| CheckError::Io {
        path: path.to_path_buf(),
        errno,
    };
    let fd = fs::openat(
        dir,
        std::ffi::OsStr::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(io)?;
    if crate::util::lock_in_use(fd.as_fd()).map_err(io)? {
        Ok(fd)
    } else {
        Err(CheckError::InUse {
            path: path.to_path_buf(),
        })
    }
}

/// Where findings go, and whether to repair them.
struct Out<'a> {
    repair: bool,
    report: &'a mut Report,
}

impl Out<'_> {
    /// Records a finding; repairs it with `fix` when asked and allowed.
    /// A failed repair is reported with the problem, not as an error of
    /// the whole check.
    fn found(
        &mut self,
        path: PathBuf,
        problem: Problem,
        detail: Option<String>,
        fix: impl FnOnce() -> crate::Result<()>,
    ) {
        let mut detail = detail;
        let repaired = if self.repair && problem.repairable() {
            match fix() {
                Ok(()) => true,
                Err(e) => {
                    let why = format!("repair failed: {e}");
                    detail = Some(match detail {
                        Some(d) => format!("{d}; {why}"),
                        None => why,
                    });
                    false
                }
            }
        } else {
            false
        };
        self.report.findings.push(Finding {
            path,
            problem,
            detail,
            repaired,
        });
    }
}
