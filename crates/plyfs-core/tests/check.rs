//! `check`: an upper written through the core (no mount) checks clean;
//! each defect a crash, another tool or a hand edit can leave is found,
//! and the safe repairs leave an upper that checks clean and reads the
//! same.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use plyfs_core::check::{CheckError, CheckOptions, Problem, Report, Severity, check};
use plyfs_core::{Caller, Config, Errno, Ino, Overlay, ROOT_INO, SetAttr};

struct Stack {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Stack {
    fn new() -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("plyfs-check-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = dir.path().to_path_buf();
        for d in ["l1", "l2", "upper", "work"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Stack { _dir: dir, root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }

    fn file(&self, rel: &str, s: &str) -> &Self {
        std::fs::write(self.p(rel), s).unwrap();
        self
    }

    fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.p(rel)).unwrap();
        self
    }

    fn whiteout(&self, rel: &str) -> &Self {
        let p = self.p(rel);
        let parent = plyfs_sys::fs::open_path(p.parent().unwrap(), libc::O_PATH).unwrap();
        plyfs_sys::fs::mknodat(parent.as_fd(), p.file_name().unwrap(), libc::S_IFCHR, 0).unwrap();
        self
    }

    fn xattr(&self, rel: &str, name: &str, v: &[u8]) -> &Self {
        xattr::set(self.root.join(rel), name, v).unwrap();
        self
    }

    fn config(&self) -> Config {
        Config {
            lowers: vec![self.root.join("l1"), self.root.join("l2")],
            upper: Some(self.root.join("upper")),
            work: Some(self.root.join("work")),
            ..Config::default()
        }
    }

    fn union(&self) -> Overlay {
        Overlay::new(self.config()).unwrap()
    }

    fn check(&self, repair: bool) -> Report {
        check(&CheckOptions {
            upper: self.root.join("upper"),
            lowers: vec![self.root.join("l1"), self.root.join("l2")],
            work: Some(self.root.join("work")),
            repair,
        })
        .unwrap()
    }
}

fn is_root() -> bool {
    plyfs_sys::process::geteuid() == 0
}

fn walk(ov: &Overlay, path: &str) -> Result<Ino, Errno> {
    let mut ino = ROOT_INO;
    for comp in Path::new(path).components() {
        ino = ov.lookup(ino, comp.as_os_str())?.ino;
    }
    Ok(ino)
}

/// (problem, path relative to the stack) of every finding.
fn found(s: &Stack, r: &Report) -> Vec<(Problem, String)> {
    r.findings
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix(&s.root).unwrap_or(&f.path);
            (f.problem, rel.display().to_string())
        })
        .collect()
}

fn assert_clean(s: &Stack) {
    let r = s.check(false);
    assert!(
        r.findings.is_empty(),
        "expected a clean upper: {:#?}",
        r.findings
    );
}

/// Every kind of change the union makes leaves an upper that checks
/// clean: no false alarms.
#[test]
fn changes_through_the_union_check_clean() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for trusted.* xattrs");
        return;
    }
    let s = Stack::new();
    s.file("l2/d/a", "a")
        .file("l2/d/b", "b")
        .file("l1/d/c", "c")
        .file("l2/e/x", "x")
        .file("l1/f", "f")
        .file("l2/big", &"z".repeat(10_000));
    std::fs::hard_link(s.p("l2/d/a"), s.p("l2/d/a2")).unwrap();
    let ov = s.union();
    let d = walk(&ov, "d").unwrap();
    // Copy-up by metadata, by data; a whiteout; a rename leaving one.
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    ov.setattr(walk(&ov, "f").unwrap(), &chmod, None).unwrap();
    ov.open(walk(&ov, "big").unwrap(), libc::O_WRONLY).unwrap();
    ov.unlink(d, OsStr::new("b")).unwrap();
    ov.rename(d, OsStr::new("c"), ROOT_INO, OsStr::new("c2"), 0)
        .unwrap();
    // A hard link of a lower file: into the index.
    ov.setattr(walk(&ov, "d/a").unwrap(), &chmod, None).unwrap();
    ov.link(walk(&ov, "d/a").unwrap(), ROOT_INO, OsStr::new("a3"))
        .unwrap();
    // A merged directory renamed (redirect), into a new directory.
    let n = ov
        .mkdir(ROOT_INO, OsStr::new("n"), 0o755, Caller::ROOT)
        .unwrap();
    ov.rename(ROOT_INO, OsStr::new("e"), n.ino, OsStr::new("e2"), 0)
        .unwrap();
    // A copied-up file moved into a directory of the upper alone.
    ov.rename(ROOT_INO, OsStr::new("f"), n.ino, OsStr::new("f"), 0)
        .unwrap();
    // A directory deleted and made again: opaque.
    ov.unlink(walk(&ov, "n/e2").unwrap(), OsStr::new("x"))
        .unwrap();
    ov.rmdir(n.ino, OsStr::new("e2")).unwrap();
    ov.mkdir(n.ino, OsStr::new("e2"), 0o755, Caller::ROOT)
        .unwrap();
    drop(ov);
    assert_clean(&s);
    assert!(
        xattr::get(s.p("upper/n"), "trusted.overlay.impure")
            .unwrap()
            .is_some()
    );
}

#[test]
fn leftovers_of_a_crash_are_found_and_removed() {
    if !is_root() {
        return;
    }
    let s = Stack::new();
    s.file("l1/f", "f");
    drop(s.union());
    s.file("work/work/#plyfs.1.1", "half a copy")
        .file("work/work/#plyfs.1.2/deep/x", "x");
    // The last name of a hard link went, the index entry did not.
    let orphan = "00fb1d0001000000000000000000000000000000001c00990095012592";
    s.file(&format!("work/index/{orphan}"), "data").xattr(
        &format!("work/index/{orphan}"),
        "trusted.overlay.nlink",
        b"U-1",
    );
    s.file("work/index/not-a-handle", "");
    let r = s.check(false);
    let mut got = found(&s, &r);
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (Problem::OrphanIndex, format!("work/index/{orphan}")),
            (Problem::BadIndexName, "work/index/not-a-handle".into()),
            (Problem::StrayWork, "work/work/#plyfs.1.1".into()),
            (Problem::StrayWork, "work/work/#plyfs.1.2".into()),
        ]
    );
    assert_eq!(r.left(Severity::Leftover), 3);
    assert_eq!(r.left(Severity::Defect), 1);
    let r = s.check(true);
    assert_eq!(r.repaired(), 4, "{:#?}", r.findings);
    assert_clean(&s);
    assert!(
        std::fs::read_dir(s.p("work/work"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn whiteouts_out_of_place() {
    if !is_root() {
        return;
    }
    let s = Stack::new();
    s.file("l1/o/hidden", "h")
        .file("l1/m/x", "x")
        .file("l2/m/gone", "g");
    drop(s.union());
    s.dir("upper/o")
        .xattr("upper/o", "trusted.overlay.opaque", b"y")
        .whiteout("upper/o/hidden")
        .dir("upper/oci")
        .file("upper/oci/.wh..wh..opq", "")
        .file("upper/oci/.wh.old", "")
        .dir("upper/m")
        .whiteout("upper/m/never-there")
        // An xattr whiteout whose directory is not marked: a listing shows
        // it as an empty file, a lookup as nothing.
        .file("upper/m/gone", "")
        .xattr("upper/m/gone", "trusted.overlay.whiteout", b"y");
    let ov = s.union();
    let names: Vec<_> = ov
        .read_dir(walk(&ov, "m").unwrap())
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.iter().any(|n| n == "gone"), "{names:?}");
    assert_eq!(walk(&ov, "m/gone"), Err(Errno::ENOENT));
    drop(ov);
    let r = s.check(false);
    let got = found(&s, &r);
    for want in [
        (Problem::WhiteoutInOpaque, "upper/o/hidden"),
        (Problem::WhiteoutInOpaque, "upper/oci/.wh.old"),
        (Problem::UnneededWhiteout, "upper/m/never-there"),
        (Problem::UnmarkedXattrWhiteout, "upper/m/gone"),
    ] {
        assert!(
            got.contains(&(want.0, want.1.to_string())),
            "{want:?} not in {got:?}"
        );
    }
    assert_eq!(got.len(), 4, "{got:?}");
    s.check(true);
    let r = s.check(false);
    assert_eq!(
        found(&s, &r),
        vec![(Problem::UnneededWhiteout, "upper/m/never-there".into())]
    );
    assert!(!s.p("upper/o/hidden").exists());
    let ov = s.union();
    let names: Vec<_> = ov
        .read_dir(walk(&ov, "m").unwrap())
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(!names.iter().any(|n| n == "gone"), "{names:?}");
}

#[test]
fn marker_values_nobody_can_read() {
    if !is_root() {
        return;
    }
    let s = Stack::new();
    s.file("l1/f", "f");
    drop(s.union());
    s.file("upper/nl", "n")
        .xattr("upper/nl", "trusted.overlay.nlink", b"U+many")
        .file("upper/or", "o")
        .xattr("upper/or", "trusted.overlay.origin", b"\x00\xfbjunk")
        .file("upper/ov", "v")
        .xattr("upper/ov", "user.containers.override_stat", b"1:2")
        .dir("upper/rd")
        .xattr("upper/rd", "trusted.overlay.redirect", b"a/b")
        .dir("upper/nowhere")
        .xattr("upper/nowhere", "trusted.overlay.redirect", b"/no/such/dir")
        .file("upper/meta", "")
        .xattr("upper/meta", "trusted.overlay.metacopy", b"");
    let r = s.check(false);
    let got: Vec<Problem> = r.findings.iter().map(|f| f.problem).collect();
    let count = |p| got.iter().filter(|&&g| g == p).count();
    assert_eq!(count(Problem::UselessValue), 2, "{:#?}", r.findings);
    assert_eq!(count(Problem::BadValue), 2, "{:#?}", r.findings);
    assert_eq!(count(Problem::DanglingRedirect), 1, "{:#?}", r.findings);
    assert_eq!(count(Problem::MetacopyWithoutData), 1, "{:#?}", r.findings);
    // The redirect found makes the root need its impure mark.
    assert_eq!(count(Problem::MissingImpure), 1, "{:#?}", r.findings);
    assert_eq!(got.len(), 7, "{:#?}", r.findings);
    let r = s.check(true);
    assert_eq!(r.repaired(), 3);
    assert_eq!(r.left(Severity::Defect), 4);
    assert!(
        xattr::get(s.p("upper/nl"), "trusted.overlay.nlink")
            .unwrap()
            .is_none()
    );
    assert!(
        xattr::get(s.p("upper/or"), "trusted.overlay.origin")
            .unwrap()
            .is_none()
    );
    // What only a person can judge stays.
    assert!(
        xattr::get(s.p("upper/ov"), "user.containers.override_stat")
            .unwrap()
            .is_some()
    );
    assert!(
        xattr::get(s.p("upper/nowhere"), "trusted.overlay.redirect")
            .unwrap()
            .is_some()
    );
}

/// A copied-up file renamed into a directory of the upper alone: the
/// directory must be marked impure before the file arrives. A crash
/// between the two (before plyfs marked it first) left a file whose
/// inode number the union no longer took from its origin.
#[test]
fn missing_impure_mark_is_found_and_set() {
    if !is_root() {
        return;
    }
    let s = Stack::new();
    s.file("l1/f", "f");
    let ov = s.union();
    let ino = ov.lookup(ROOT_INO, OsStr::new("f")).unwrap().attr.st_ino;
    let n = ov
        .mkdir(ROOT_INO, OsStr::new("n"), 0o755, Caller::ROOT)
        .unwrap();
    ov.rename(ROOT_INO, OsStr::new("f"), n.ino, OsStr::new("f"), 0)
        .unwrap();
    drop(ov);
    assert_eq!(ino, std::fs::metadata(s.p("l1/f")).unwrap().ino());
    // What a crash right after the rename left.
    xattr::remove(s.p("upper/n"), "trusted.overlay.impure").unwrap();
    let ov = s.union();
    let shown = ov.lookup(walk(&ov, "n").unwrap(), OsStr::new("f")).unwrap();
    assert_ne!(
        shown.attr.st_ino, ino,
        "without the mark the origin is not read"
    );
    drop(ov);
    let r = s.check(false);
    assert_eq!(
        found(&s, &r),
        vec![(Problem::MissingImpure, "upper/n".into())]
    );
    s.check(true);
    assert_clean(&s);
    let ov = s.union();
    let shown = ov.lookup(walk(&ov, "n").unwrap(), OsStr::new("f")).unwrap();
    assert_eq!(shown.attr.st_ino, ino);
}

#[test]
fn a_mounted_upper_is_not_checked() {
    if !is_root() {
        return;
    }
    let s = Stack::new();
    s.file("l1/f", "f");
    let ov = s.union();
    let err = check(&CheckOptions {
        upper: s.root.join("upper"),
        lowers: vec![],
        work: Some(s.root.join("work")),
        repair: true,
    })
    .unwrap_err();
    assert!(matches!(err, CheckError::InUse { .. }), "{err}");
    drop(ov);
    assert_clean(&s);
}
