//! What each fuzz target does with its input. Shared by the cargo-fuzz
//! binaries (`fuzz/fuzz_targets/`) and the workspace's stable replay of
//! the corpus (`tests/fuzz_replay.rs`), which includes this file.
//!
//! Targets that touch a filesystem get a scratch directory of their own
//! and put a canary beside what they work on; they fail (panic, which the
//! fuzzer reports as a crash) when the canary changed.

use std::io::Write;
use std::path::{Path, PathBuf};

use plyfs_core::fuzzing;
use plyfs_image::WhiteoutFormat;
use plyfs_image::unpack::{UnpackOptions, unpack};

// The binary's option parser, as it is: no library exposes it, and the
// daemon's API need not grow for a fuzzer.
#[allow(dead_code)]
#[path = "../../src/options.rs"]
mod options;

/// A scratch directory for target `name` of this process (on tmpfs when
/// there is one: every execution builds and removes layers).
pub fn scratch(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("plyfs-fuzz-{name}-{}", std::process::id()))
}

/// `-o` option strings (NUL separates several `-o` arguments), also
/// through `lowerdir=`'s own splitting and the id-mapping parser.
pub fn options(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let args: Vec<String> = s.split('\0').map(str::to_string).collect();
    for root in [false, true] {
        if let Ok(req) = options::parse(&args, options::Defaults { root }) {
            // A parsed request always names its lowers.
            assert!(!req.config.lowers.is_empty());
        }
    }
    if let Ok(opts) = options::split_options(s) {
        assert!(opts.iter().all(|o| !o.is_empty()));
    }
    if let Ok((lowers, _)) = options::split_lowers(s) {
        assert!(!lowers.is_empty());
    }
    let _ = plyfs_fuse::IdMap::parse(s);
}

/// Every marker value parser.
pub fn marker_values(data: &[u8]) {
    fuzzing::marker_values(data);
}

/// One object's attributes, as a lookup reads them.
pub fn markers(data: &[u8]) {
    fuzzing::markers(data);
}

/// A saved lower index.
pub fn lower_index(data: &[u8]) {
    fuzzing::lower_index(data);
}

/// Hostile layers, walked and changed through the union, then checked.
pub fn union(scratch: &Path, data: &[u8]) {
    fuzzing::union(scratch, data);
    let _ = std::fs::remove_dir_all(scratch);
}

/// Hostile layers checked offline (`plyfs check`, then `--repair`).
pub fn check(scratch: &Path, data: &[u8]) {
    fuzzing::check(scratch, data);
    let _ = std::fs::remove_dir_all(scratch);
}

/// One layer tar unpacked (as `image import` and `image pull` do): the
/// input as a tar, or (first byte odd) a tar made of hostile entries the
/// input describes. Nothing may appear or change outside the layer.
pub fn image_layer(scratch: &Path, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let _ = std::fs::remove_dir_all(scratch);
    let dest = scratch.join("layer");
    let canary = scratch.join("canary");
    if std::fs::create_dir_all(&dest).is_err() || fuzzing::make_canary(&canary).is_err() {
        return;
    }
    let before = fuzzing::tree_state(scratch);
    let tar = if mode & 1 == 1 {
        hostile_tar(rest, &canary)
    } else {
        rest.to_vec()
    };
    let opts = UnpackOptions {
        rootless: mode & 2 == 2,
        whiteouts: if mode & 4 == 4 {
            WhiteoutFormat::Kernel
        } else {
            WhiteoutFormat::Oci
        },
    };
    let _ = unpack(&tar[..], &dest, "fuzz", opts);
    let after: Vec<_> = fuzzing::tree_state(scratch)
        .into_iter()
        .filter(|(p, ..)| !p.starts_with(&dest))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(p, ..)| !p.starts_with(&dest))
        .collect();
    assert_eq!(
        after, before,
        "unpacking changed something outside the layer"
    );
    let _ = std::fs::remove_dir_all(scratch);
}

/// An image archive imported into a store: the input as the archive, or
/// (first byte odd) a docker-archive whose `manifest.json` and config are
/// the input's and whose layer is a hostile tar.
pub fn image_archive(scratch: &Path, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let _ = std::fs::remove_dir_all(scratch);
    let canary = scratch.join("canary");
    let store_dir = scratch.join("store");
    if std::fs::create_dir_all(&store_dir).is_err() || fuzzing::make_canary(&canary).is_err() {
        return;
    }
    let archive = scratch.join("archive.tar");
    let bytes = if mode & 1 == 1 {
        docker_archive(rest, &canary)
    } else {
        rest.to_vec()
    };
    if std::fs::write(&archive, &bytes).is_err() {
        return;
    }
    let before = fuzzing::tree_state(&canary);
    if let Ok(store) = plyfs_image::Store::open(&store_dir) {
        let whiteouts = if mode & 4 == 4 {
            WhiteoutFormat::Kernel
        } else {
            WhiteoutFormat::Oci
        };
        let _ = plyfs_image::import::import(&store, &archive, whiteouts, &plyfs_image::Quiet);
    }
    assert_eq!(
        fuzzing::tree_state(&canary),
        before,
        "importing changed the canary"
    );
    let _ = std::fs::remove_dir_all(scratch);
}

/// Entry names a hostile tar is made of: escapes, markers and the names
/// later entries reach through.
const TAR_NAMES: [&str; 16] = [
    "a",
    "a/b",
    "l",
    "l/file",
    "l/sub/x",
    "../canary/file",
    "/etc/x",
    "./a/../../canary",
    ".wh.a",
    "a/.wh..wh..opq",
    ".wh.l",
    "d/",
    "d/e/f",
    "h",
    "",
    "a//b/./c",
];

/// A tar of entries the input describes, each header written raw (the
/// tar crate's builder refuses the names worth trying): (type, name,
/// link target, mode, size) per entry.
fn hostile_tar(data: &[u8], canary: &Path) -> Vec<u8> {
    let canary = canary.to_string_lossy().into_owned();
    let targets = [
        "/",
        "..",
        "../..",
        "../canary",
        canary.as_str(),
        "a",
        "l/file",
        "../canary/file",
    ];
    let mut out = Vec::new();
    for chunk in data.chunks(4) {
        let [kind, name, target, extra] = [0, 1, 2, 3].map(|i| chunk.get(i).copied().unwrap_or(0));
        let mut h = tar::Header::new_old();
        let name = TAR_NAMES[usize::from(name) % TAR_NAMES.len()];
        let target = targets[usize::from(target) % targets.len()];
        let (kind, size) = match kind % 8 {
            0 => (tar::EntryType::Regular, usize::from(extra % 4)),
            1 => (tar::EntryType::Directory, 0),
            2 => (tar::EntryType::Symlink, 0),
            3 => (tar::EntryType::Link, 0),
            4 => (tar::EntryType::Char, 0),
            5 => (tar::EntryType::Fifo, 0),
            6 => (tar::EntryType::XGlobalHeader, 0),
            _ => (tar::EntryType::Regular, 600),
        };
        {
            let old = h.as_old_mut();
            copy_field(&mut old.name, name.as_bytes());
            copy_field(&mut old.linkname, target.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode((u32::from(extra) * 0o101) & 0o7777);
        h.set_uid(u64::from(extra));
        h.set_gid(0);
        h.set_mtime(u64::from(extra) << 20);
        h.set_size(size as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend(std::iter::repeat_n(b'x', size));
        let pad = (512 - size % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn copy_field(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// A docker-archive: `manifest.json` and `config.json` from the input
/// (split at the first 0xff byte), with a hostile layer `layer.tar` made
/// of what follows a second 0xff.
pub(crate) fn docker_archive(data: &[u8], canary: &Path) -> Vec<u8> {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let manifest = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    let layer = hostile_tar(parts.next().unwrap_or_default(), canary);
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("manifest.json", manifest),
        ("config.json", config),
        ("layer.tar", &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        if b.append_data(&mut h, name, body).is_err() {
            return Vec::new();
        }
    }
    b.into_inner().unwrap_or_default()
}

/// The seed corpus of each target: small inputs that reach deep (valid
/// values of every marker, a valid index, archives that import), from
/// which the fuzzer mutates. `fuzz/run.sh` writes them to `fuzz/corpus/`
/// (`PLYFS_FUZZ_WRITE_SEEDS`), where they are committed.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for s in [
        "lowerdir=/a:/b,upperdir=/u,workdir=/w",
        "lowerdir=/a\\:b::/data,ro,uidmapping=0:1000:1:1:100000:65536,squash_to_uid=5",
        "lowerdir=/l,context=\"a,b\",xattr_permissions=2,timeout=3,threads=2,metacopy=on",
        "lowerdir=/l,upperdir=/u,workdir=/w,noatime,suid,fsname=x,subtype=y,ino32_t,static_nlink",
        "lowerdir=/l\0upperdir=/u,workdir=/w,passthrough=0,writeback=0,volatile,userxattr",
    ] {
        v.push(("options", s.as_bytes().to_vec()));
    }
    for s in [
        &b"/a/b"[..],
        b"d",
        b"L+1",
        b"U-2",
        b"0:0:0644:file",
        b"1000:1000:4755:char-1-3",
        b"10:20:40755",
        b"\x00\xfb\x1d\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x1c\x00\x99\x00\x95\x01\x25\x92",
    ] {
        v.push(("marker_values", s.to_vec()));
    }
    v.push((
        "markers",
        b"\x00\x01y\x01\x04/a/b\x04\x03L+1\x0e\x0d0:0:0644:file".to_vec(),
    ));
    v.push(("lower_index", plyfs_core::fuzzing::sample_lower_index()));
    // Layers: a symlink to the canary over a lower directory, a redirect
    // through it, a forged link count, a metacopy file without data.
    v.push((
        "union",
        vec![
            0, 2, 1, 0, 0, // l1: d/
            0, 2, 1, 7, 0, // l1: d/sub/
            1, 2, 1, 10, 3, // l1: d/f
            2, 1, 1, 0, 5, // l0: d -> the canary
            0, 0, 0, 0, 0, // upper: a/
            6, 0, 0, 0, 1, 5, // upper a: redirect /d/sub
            1, 2, 3, 0, 2, // l1: f
            1, 0, 3, 0, 2, // upper: f
            6, 0, 3, 0, 6, 7, // upper f: metacopy
            6, 0, 3, 0, 4, 8, // upper f: nlink L+9223372036854775807
            2, 2, 0, 0, 1, // l1: a -> ..
            2, 0, 7, 0, 0, // upper: h -> /
        ],
    ));
    v.push(("check", v.last().map(|s| s.1.clone()).unwrap_or_default()));
    v.push(("image_layer", {
        let mut d = vec![1u8];
        d.extend([2, 2, 3, 0, 0, 3, 0, 0, 3, 5, 7, 0, 1, 11, 0, 0, 0, 12, 0, 2]);
        d
    }));
    v.push(("image_layer", {
        let mut d = vec![0u8];
        d.extend(hostile_tar(
            &[1, 0, 0, 0, 0, 1, 0, 2],
            Path::new("/nonexistent"),
        ));
        d
    }));
    v.push(("image_archive", {
        let layer = hostile_tar(&[1, 0, 0, 0, 0, 1, 0, 2], Path::new("/nonexistent"));
        let diff = plyfs_image::Digest::of(&layer);
        let config = format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{diff}\"]}}}}"
        );
        let manifest =
            "[{\"Config\":\"config.json\",\"RepoTags\":[\"fuzz:1\"],\"Layers\":[\"layer.tar\"]}]";
        let mut d = vec![1u8];
        d.extend_from_slice(manifest.as_bytes());
        d.push(0xff);
        d.extend_from_slice(config.as_bytes());
        d.push(0xff);
        d.extend([1, 0, 0, 0, 0, 1, 0, 2]);
        d
    }));
    v
}

/// Writes the seeds into `dir/TARGET/`, named by content.
pub fn write_seeds(dir: &Path) -> std::io::Result<()> {
    for (target, data) in seeds() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        let name = format!("seed-{:016x}", fnv(&data));
        std::fs::File::create(d.join(name))?.write_all(&data)?;
    }
    Ok(())
}

fn fnv(v: &[u8]) -> u64 {
    v.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Runs target `name` on `data` (scratch space under `scratch`).
pub fn run(name: &str, scratch: &Path, data: &[u8]) {
    match name {
        "options" => options(data),
        "marker_values" => marker_values(data),
        "markers" => markers(data),
        "lower_index" => lower_index(data),
        "union" => union(scratch, data),
        "check" => check(scratch, data),
        "image_layer" => image_layer(scratch, data),
        "image_archive" => image_archive(scratch, data),
        other => panic!("no fuzz target {other}"),
    }
}

/// Every target's name.
pub const TARGETS: [&str; 8] = [
    "options",
    "marker_values",
    "markers",
    "lower_index",
    "union",
    "check",
    "image_layer",
    "image_archive",
];
