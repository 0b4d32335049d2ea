//! Entry points for the fuzz targets (`fuzz/`) and for the test that
//! replays their corpus (`tests/fuzz_replay.rs`): each takes untrusted
//! bytes the way plyfs meets them on disk and must neither panic nor
//! reach outside the layers, whatever the bytes are. Built only with the
//! `fuzzing` feature, so the daemon's API stays as it is.
//!
//! Besides "no panic", each entry checks the properties a parser owes its
//! writer: what parses formats back to the same value, and every errno
//! is one a caller can be given.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::check::{self as offline, CheckOptions};
use crate::error::Errno;
use crate::inode::origin::OriginFh;
use crate::lower_index::{self, LowerListing};
use crate::markers::audit::{RawKind, RawMarker};
use crate::markers::{Markers, Nlink, OverrideNs, Redirect, StatOverride, XattrNs};
use crate::sys::fs;
use crate::{Caller, Config, Ino, Overlay, ROOT_INO, SetAttr, SetTime};

/// Every marker value parser on `data`: redirects, persistent link
/// counts, origins (file handles), override-stat values, and the check's
/// judgement of each kind of raw marker.
pub fn marker_values(data: &[u8]) {
    match Redirect::parse(data) {
        Ok(Redirect::Absolute(comps)) => {
            // What parses is the C string up to the first NUL, exactly.
            let cstr = data.split(|&b| b == 0).next().unwrap_or_default();
            assert_eq!(Redirect::absolute(&comps), cstr);
            assert!(
                comps
                    .iter()
                    .all(|c| !c.is_empty() && c != b".." && c != b".")
            );
        }
        Ok(Redirect::Relative(name)) => {
            assert!(!name.contains(&b'/') && !name.contains(&0));
            assert!(name != b".." && name != b"." && !name.is_empty());
        }
        Err(e) => assert!(e == Errno::EINVAL || e == Errno::EACCES, "{e}"),
    }
    if let Some(n) = Nlink::parse(data) {
        assert_eq!(Nlink::parse(&n.format()), Some(n));
        for (lower, upper) in [(0, 0), (1, 1), (2, u64::MAX), (u64::MAX, 3), (7, 1 << 33)] {
            if let Some(c) = n.union_count(lower, upper) {
                assert!(c <= i32::MAX as u64);
                if let Some(back) = Nlink::relative_to_upper(c, upper) {
                    assert_eq!(back.union_count(lower, upper), Some(c));
                }
            }
        }
    }
    if let Some(fh) = OriginFh::decode(data) {
        assert_eq!(fh.encode(), data);
        assert_eq!(fh.index_name().len(), 2 * data.len());
    }
    if let Some(o) = StatOverride::parse(data) {
        assert_eq!(StatOverride::parse(&o.format()), Some(o));
        for real in [libc::S_IFREG, libc::S_IFDIR, libc::S_IFLNK] {
            let (mode, _) = o.reported(real | 0o644, 0);
            // A real directory or symlink is never shown as another type.
            if real != libc::S_IFREG {
                assert_eq!(mode & libc::S_IFMT, real);
            }
            assert!(mode & !(libc::S_IFMT | 0o7777) == 0);
        }
        let _ = o.dtype(libc::DT_REG);
    }
    let kinds = [
        RawKind::Opaque,
        RawKind::Redirect,
        RawKind::Origin,
        RawKind::Impure,
        RawKind::Nlink,
        RawKind::Whiteout,
        RawKind::Metacopy,
        RawKind::Override(OverrideNs::Containers),
    ];
    for kind in kinds {
        let m = RawMarker {
            attr: "trusted.overlay.x".into(),
            kind,
            ns: Some(XattrNs::Trusted),
            value: data.to_vec(),
        };
        let _ = m.defect();
    }
}

/// Attribute names a layer object may carry, for [`markers`].
const NAMES: [&str; 20] = [
    "trusted.overlay.opaque",
    "trusted.overlay.redirect",
    "trusted.overlay.origin",
    "trusted.overlay.impure",
    "trusted.overlay.nlink",
    "trusted.overlay.whiteout",
    "trusted.overlay.metacopy",
    "user.overlay.opaque",
    "user.overlay.redirect",
    "user.overlay.origin",
    "user.overlay.impure",
    "user.overlay.nlink",
    "user.overlay.whiteout",
    "user.overlay.metacopy",
    "user.containers.override_stat",
    "user.fuseoverlayfs.override_stat",
    "security.fuseoverlayfs.override_stat",
    "trusted.overlay.overlay.opaque",
    "user.overlay.unknown",
    "security.capability",
];

/// One object's whole set of attributes, as `Markers::read` takes them
/// in: `data` is a sequence of (name selector byte, value length byte,
/// value) records. The names shown through a mount, and how they map to
/// the real ones, are checked both ways.
pub fn markers(data: &[u8]) {
    let mut m = Markers::default();
    let mut rest = data;
    while let [sel, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (value, next) = tail.split_at(n);
        let name = NAMES[usize::from(*sel) % NAMES.len()];
        let _ = m.take(name.as_bytes(), || Ok(Some(value.to_vec())));
        // A name that is not a selector: any bytes as a name.
        if *sel >= 0xf0 {
            let _ = m.take(value, || Ok(Some(Vec::new())));
            shown_and_real(value);
        }
        rest = next;
    }
    if let Some(r) = &m.redirect {
        let _ = Redirect::parse(r);
    }
    if let Some(o) = &m.origin {
        let _ = OriginFh::decode(o);
    }
    for ns in OverrideNs::ALL {
        let _ = m.stat_override(ns);
    }
    let _ = m.override_ns();
    for name in NAMES {
        shown_and_real(name.as_bytes());
    }
}

/// A name set through a mount is stored as [`crate::markers::xattr_to_real`]
/// says and lists back as it was set.
fn shown_and_real(name: &[u8]) {
    use crate::markers::{is_internal_xattr, xattr_shown, xattr_to_real};
    let _ = is_internal_xattr(name);
    if let Some(real) = xattr_to_real(OsStr::from_bytes(name)) {
        let shown = xattr_shown(real.as_bytes()).map(|c| c.into_owned());
        assert_eq!(shown.as_deref(), Some(name));
    }
}

/// A saved lower index, as the next mount reads it from the work
/// directory: decoded for the layers it names itself (so that every
/// record reaches the checks), and, when accepted, every record's names
/// read and the records merged into a listing.
pub fn lower_index(data: &[u8]) {
    let layers: Vec<(u64, u64)> = match postcard::take_from_bytes::<(u32, Vec<(u64, u64)>)>(data) {
        Ok(((_, l), _)) => l,
        Err(_) => Vec::new(),
    };
    let Ok(records) = lower_index::decode(data, &layers) else {
        return;
    };
    let records: Vec<_> = records.into_iter().map(Arc::new).collect();
    let listing = LowerListing::from_records(records);
    for (name, hit) in listing.visible() {
        assert!(crate::util::is_component(name.as_bytes()));
        assert!(listing.first_hit(name, hit.pos).is_some());
    }
}

/// Names a hostile layer is built from: nested paths are these joined.
const PATH_PARTS: [&str; 8] = ["a", "d", "sub", "f", ".wh.a", ".wh..wh..opq", "x", "h"];

/// A scratch set of layers built from fuzz input, beside a canary that no
/// operation of plyfs may touch.
pub struct HostileLayers {
    pub root: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub canary: PathBuf,
}

impl HostileLayers {
    /// Builds two lowers and an upper under `root` (made anew) from
    /// `data`, a program of layer-building steps: directories, files,
    /// symlinks (to `/`, `..`, the canary, chains), whiteouts of every
    /// format (an OCI whiteout may be a symlink), hard links, FIFOs, and
    /// attributes with chosen or arbitrary values.
    pub fn build(root: &Path, data: &[u8]) -> std::io::Result<HostileLayers> {
        let _ = std::fs::remove_dir_all(root);
        std::fs::create_dir_all(root)?;
        let canary = root.join("canary");
        make_canary(&canary)?;
        let h = HostileLayers {
            root: root.to_path_buf(),
            upper: root.join("upper"),
            work: root.join("work"),
            lowers: vec![root.join("l0"), root.join("l1")],
            canary,
        };
        for d in [&h.upper, &h.work, &h.lowers[0], &h.lowers[1]] {
            std::fs::create_dir_all(d)?;
        }
        let values: Vec<Vec<u8>> = vec![
            b"y".to_vec(),
            b"x".to_vec(),
            b"yes".to_vec(),
            b"/../canary".to_vec(),
            b"..".to_vec(),
            b"/d/sub".to_vec(),
            b"/a".to_vec(),
            b"d".to_vec(),
            b"L+9223372036854775807".to_vec(),
            b"U-1".to_vec(),
            b"L+2".to_vec(),
            b"0:0:7777:char-1-3".to_vec(),
            b"4294967295:0:4755:file".to_vec(),
            b"0:0:0644:dir".to_vec(),
            h.canary.as_os_str().as_bytes().to_vec(),
            b"\x00\xfb\x15\x00\x01"
                .iter()
                .chain(&[0u8; 16])
                .copied()
                .collect(),
        ];
        let targets: Vec<Vec<u8>> = vec![
            b"/".to_vec(),
            b"..".to_vec(),
            b"../..".to_vec(),
            b"../../canary".to_vec(),
            b"../../../canary/sub".to_vec(),
            h.canary.as_os_str().as_bytes().to_vec(),
            b"a".to_vec(),
            b"d/sub".to_vec(),
        ];
        let mut input = Input { data, at: 0 };
        while let (Some(op), Some(layer), Some(p1), Some(p2)) =
            (input.byte(), input.byte(), input.byte(), input.byte())
        {
            let root = match layer % 3 {
                0 => &h.upper,
                1 => &h.lowers[0],
                _ => &h.lowers[1],
            };
            let arg = input.byte().unwrap_or(0);
            let value = if op % 10 == 6 || op % 10 == 7 {
                match input.byte() {
                    Some(v) if usize::from(v) < values.len() => values[usize::from(v)].clone(),
                    Some(v) => input.take(usize::from(v % 32)).to_vec(),
                    None => Vec::new(),
                }
            } else {
                Vec::new()
            };
            // The builder itself never follows a symlink it made (nor
            // blocks on a FIFO): a step that would is skipped.
            let Some((dir, name)) = place(root, &rel_path(p1, p2)) else {
                continue;
            };
            let (d, n) = (dir.as_fd(), name.as_os_str());
            let _ = match op % 10 {
                0 => fs::mkdirat(d, n, 0o755),
                1 => new_file(d, n, usize::from(arg % 8)),
                2 => fs::symlinkat(
                    OsStr::from_bytes(&targets[usize::from(arg) % targets.len()]),
                    d,
                    n,
                ),
                3 => fs::mknodat(d, n, libc::S_IFCHR, 0),
                4 => fs::mknodat(d, n, libc::S_IFIFO | 0o644, 0),
                5 => match place(root, &rel_path(arg, arg / 8)) {
                    Some((sd, sn)) => fs::linkat(sd.as_fd(), &sn, d, n),
                    None => Ok(()),
                },
                6 | 7 => {
                    let attr = OsStr::new(NAMES[usize::from(arg) % 17]);
                    crate::sys::xattr::set(d, n, attr, &value, 0)
                }
                8 => fs::unlinkat(d, n, false),
                _ => new_file(d, n, 0),
            };
        }
        Ok(h)
    }

    /// A snapshot of the canary: every name, content, mode and time.
    pub fn canary_state(&self) -> Vec<TreeEntry> {
        tree_state(&self.canary)
    }
}

/// A canary directory at `dir`: a file, a subdirectory and a file in it,
/// for a target to compare before and after (with [`tree_state`]).
pub fn make_canary(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("sub"))?;
    std::fs::write(dir.join("file"), b"canary")?;
    std::fs::write(dir.join("sub/x"), b"canary sub")
}

/// One object of a [`tree_state`]: path, content (files), mode and
/// modification time.
pub type TreeEntry = (PathBuf, Vec<u8>, u32, i64, i64);

/// Every path below `root` (itself included) with what a change to it
/// would show, sorted: for comparing a tree before and after.
pub fn tree_state(root: &Path) -> Vec<TreeEntry> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let content = if md.is_file() {
            std::fs::read(&p).unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push((p.clone(), content, md.mode(), md.mtime(), md.mtime_nsec()));
        if md.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    out.sort();
    out
}

/// The fuzz input, read from the front.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = self.data.get(self.at).copied();
        self.at += 1;
        b
    }

    /// Up to `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.at = end;
        &self.data[start..end]
    }
}

fn rel_path(a: u8, b: u8) -> PathBuf {
    let mut p = PathBuf::from(PATH_PARTS[usize::from(a) % PATH_PARTS.len()]);
    for k in 0..usize::from(b % 3) {
        p.push(PATH_PARTS[(usize::from(b) / 3 + k) % PATH_PARTS.len()]);
    }
    p
}

/// The directory `rel`'s last component is to be made in, below `root`,
/// opened one component at a time without following a symlink (missing
/// ones are made), and that component's name.
fn place(root: &Path, rel: &Path) -> Option<(std::os::fd::OwnedFd, std::ffi::OsString)> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut dir = fs::open_path(root, flags).ok()?;
    let comps: Vec<&OsStr> = rel.iter().collect();
    let (last, parents) = comps.split_last()?;
    for c in parents {
        let _ = fs::mkdirat(dir.as_fd(), c, 0o755);
        dir = fs::openat(dir.as_fd(), c, flags, 0).ok()?;
    }
    Some((dir, last.to_os_string()))
}

/// A new regular file of `len` bytes (never through an existing name).
fn new_file(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, len: usize) -> crate::Result<()> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let fd = fs::openat(dir, name, flags, 0o644)?;
    fs::pwrite(fd.as_fd(), &vec![b'z'; len], 0).map(drop)
}

/// Hostile layers built from `data` under `scratch`: the union over them
/// is walked (every name looked up, listed, stat'ed, read, its attributes
/// read), changed (chmod with metacopy, writes, renames, unlinks, links,
/// attributes), then checked offline (`plyfs check --repair`). Nothing
/// may panic, and the canary beside the layers must be as it was.
pub fn union(scratch: &Path, data: &[u8]) {
    let Ok(h) = HostileLayers::build(scratch, data) else {
        return;
    };
    let before = h.canary_state();
    let config = Config {
        lowers: h.lowers.clone(),
        upper: Some(h.upper.clone()),
        work: Some(h.work.clone()),
        metacopy: data.first().is_some_and(|b| b & 1 == 1),
        ..Config::default()
    };
    if let Ok(ov) = Overlay::new(config) {
        let mut seen = Vec::new();
        walk(&ov, ROOT_INO, 0, &mut seen);
        for (k, &(parent, ref name, ino)) in seen.iter().enumerate() {
            change(&ov, parent, name, ino, k);
        }
        let mut again = Vec::new();
        walk(&ov, ROOT_INO, 0, &mut again);
        let _ = ov.save_lower_index();
    }
    for repair in [false, true] {
        let _ = offline::check(&CheckOptions {
            upper: h.upper.clone(),
            lowers: h.lowers.clone(),
            work: Some(h.work.clone()),
            repair,
        });
    }
    assert_eq!(
        h.canary_state(),
        before,
        "the canary outside the layers changed"
    );
}

/// Hostile layers built from `data` under `scratch`, checked offline
/// (`plyfs check`, then `--repair`, then again): nothing may panic, the
/// canary must be as it was, and a repair leaves nothing to repair.
pub fn check(scratch: &Path, data: &[u8]) {
    let Ok(h) = HostileLayers::build(scratch, data) else {
        return;
    };
    let before = h.canary_state();
    let opts = |repair| CheckOptions {
        upper: h.upper.clone(),
        lowers: h.lowers.clone(),
        work: Some(h.work.clone()),
        repair,
    };
    let _ = offline::check(&opts(false));
    let repaired = offline::check(&opts(true))
        .map(|r| r.findings)
        .unwrap_or_default();
    // What a repair says it repaired is gone.
    if let Ok(after) = offline::check(&opts(false)) {
        for f in after.findings {
            assert!(
                !repaired
                    .iter()
                    .any(|r| r.repaired && r.path == f.path && r.problem == f.problem),
                "repaired, yet found again: {f:?}"
            );
        }
    }
    assert_eq!(
        h.canary_state(),
        before,
        "the canary outside the layers changed"
    );
}

/// A saved lower index of two small directories, as a mount writes it
/// (the seed of the `lower_index` target).
pub fn sample_lower_index() -> Vec<u8> {
    lower_index::sample()
}

/// Walks the union below `dir` (bounded), reading everything.
fn walk(ov: &Overlay, dir: Ino, depth: usize, seen: &mut Vec<(Ino, std::ffi::OsString, Ino)>) {
    if depth > 6 || seen.len() > 200 {
        return;
    }
    let Ok(entries) = ov.read_dir(dir) else {
        return;
    };
    for e in entries {
        if e.name == "." || e.name == ".." {
            continue;
        }
        assert!(crate::util::is_component(e.name.as_bytes()), "{:?}", e.name);
        let Ok(entry) = ov.lookup(dir, &e.name) else {
            continue;
        };
        seen.push((dir, e.name.clone(), entry.ino));
        let _ = ov.getattr(entry.ino);
        if let Ok(list) = ov.listxattr(entry.ino) {
            for n in crate::sys::xattr::split_names(&list) {
                let mut buf = vec![0u8; 256];
                let _ = ov.getxattr(entry.ino, n, &mut buf);
            }
        }
        match entry.attr.st_mode & libc::S_IFMT {
            libc::S_IFDIR => walk(ov, entry.ino, depth + 1, seen),
            libc::S_IFLNK => {
                let _ = ov.readlink(entry.ino);
            }
            libc::S_IFREG => {
                if let Ok(f) = ov.open(entry.ino, libc::O_RDONLY) {
                    let mut buf = [0u8; 64];
                    let _ = f.read(&mut buf, 0);
                }
            }
            _ => {}
        }
    }
}

/// One change to a walked object, chosen by its position.
fn change(ov: &Overlay, parent: Ino, name: &OsStr, ino: Ino, k: usize) {
    let caller = Caller::ROOT;
    match k % 8 {
        0 => {
            let set = SetAttr {
                mode: Some(0o640),
                ..SetAttr::default()
            };
            let _ = ov.setattr(ino, &set, None);
            if let Ok(f) = ov.open(ino, libc::O_WRONLY) {
                let _ = f.write(b"w", 0);
            }
        }
        1 => {
            let _ = ov.rename(parent, name, ROOT_INO, OsStr::new("moved"), 0);
        }
        2 => {
            let _ = ov.unlink(parent, name);
            let _ = ov.rmdir(parent, name);
        }
        3 => {
            let _ = ov.link(ino, ROOT_INO, OsStr::new("linked"));
        }
        4 => {
            let _ = ov.setxattr(ino, OsStr::new("user.fuzz"), b"v", 0, &caller);
            let _ = ov.removexattr(ino, OsStr::new("user.fuzz"), &caller);
        }
        5 => {
            let t = SetTime::At { sec: 1, nsec: 0 };
            let set = SetAttr {
                uid: Some(1),
                mtime: Some(t),
                ..SetAttr::default()
            };
            let _ = ov.setattr(ino, &set, None);
        }
        6 => {
            let _ = ov.mkdir(ino, OsStr::new("new"), 0o755, caller);
            let _ = ov.create(ino, OsStr::new("newf"), 0o644, libc::O_WRONLY, caller);
        }
        _ => {
            let set = SetAttr {
                size: Some(1),
                ..SetAttr::default()
            };
            let _ = ov.setattr(ino, &set, None);
        }
    }
}
