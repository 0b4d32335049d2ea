//! Hostile image archives: each is refused with one line that names the
//! entry and the blob, nothing is written outside the store, and the store
//! is as it was before (everything is staged and renamed in at the end).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::oci::{Blob, Comp, ImageSpec, LayerTar, Layout};
use common::*;

fn good_layer() -> Vec<u8> {
    let mut t = LayerTar::new();
    t.dir("etc/", 0o755, 0)
        .file("etc/motd", "hello\n", 0o644, 0);
    t.finish()
}

fn import(store: &Path, archive: &Path) -> (i32, String, String) {
    plyfs(&[
        OsStr::new("image"),
        OsStr::new("import"),
        OsStr::new("--store"),
        store.as_os_str(),
        archive.as_os_str(),
    ])
}

/// Every path below the store with its size, and images.json.
fn store_state(store: &Path) -> (Vec<(PathBuf, u64)>, Vec<u8>) {
    let mut v = Vec::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            }
            v.push((e.path(), if md.is_dir() { 0 } else { md.len() }));
        }
    }
    v.sort();
    (
        v,
        std::fs::read(store.join("images.json")).unwrap_or_default(),
    )
}

/// Imports `layout` into a store holding one good image; checks that it
/// is refused with one line containing each of `says`, and that the
/// store did not change.
fn refused(s: &Scratch, tag: &str, layout: Layout, says: &[&str]) {
    let store = s.path(&format!("store-{tag}"));
    let good = s.path(&format!("good-{tag}.tar"));
    Layout::oci(
        &[ImageSpec {
            name: "localhost/good:1".into(),
            layers: vec![(good_layer(), Comp::None)],
        }],
        |_, _, _| {},
    )
    .write_tar(&good);
    let (code, _, err) = import(&store, &good);
    assert_eq!(code, 0, "[{tag}] the good archive: {err}");
    let before = store_state(&store);
    let bad = s.path(&format!("bad-{tag}.tar"));
    layout.write_tar(&bad);
    let (code, out, err) = import(&store, &bad);
    assert_ne!(code, 0, "[{tag}] accepted: {out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "[{tag}] not one line:\n{err}");
    for want in says {
        assert!(
            lines[0].contains(want),
            "[{tag}] {:?} lacks {want:?}",
            lines[0]
        );
    }
    assert_eq!(store_state(&store), before, "[{tag}] the store changed");
}

fn one_layer(layer: Vec<u8>, comp: Comp) -> Vec<ImageSpec> {
    vec![ImageSpec {
        name: "localhost/bad:1".into(),
        layers: vec![(good_layer(), Comp::None), (layer, comp)],
    }]
}

fn layout(layer: Vec<u8>) -> Layout {
    Layout::oci(&one_layer(layer, Comp::None), |_, _, _| {})
}

#[test]
fn hostile_entries_are_refused() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let outside = s.path("outside");
    std::fs::create_dir_all(&outside).unwrap();

    let mut t = LayerTar::new();
    t.file("../../../escape", "x", 0o644, 0);
    refused(
        &s,
        "dotdot",
        layout(t.finish()),
        &["\"../../../escape\"", "sha256:", "..", "refused"],
    );

    let mut t = LayerTar::new();
    t.file(&format!("{}/abs", outside.display()), "x", 0o644, 0);
    refused(
        &s,
        "absolute",
        layout(t.finish()),
        &["absolute path", "sha256:"],
    );
    assert!(!outside.join("abs").exists());

    let mut t = LayerTar::new();
    t.symlink("link", outside.to_str().unwrap())
        .file("link/pwned", "x", 0o644, 0);
    refused(
        &s,
        "symlink",
        layout(t.finish()),
        &["\"link/pwned\"", "not a directory", "sha256:"],
    );
    assert!(!outside.join("pwned").exists());

    let mut t = LayerTar::new();
    t.symlink("link", outside.to_str().unwrap())
        .hardlink("hl", "link/../../etc/passwd");
    refused(
        &s,
        "hardlink-dotdot",
        layout(t.finish()),
        &["\"hl\"", "..", "sha256:"],
    );

    let mut t = LayerTar::new();
    t.hardlink("hl", "/etc/passwd");
    refused(
        &s,
        "hardlink-absolute",
        layout(t.finish()),
        &["\"hl\"", "absolute", "sha256:"],
    );

    let mut t = LayerTar::new();
    t.hardlink("hl", "etc/passwd");
    refused(
        &s,
        "hardlink-missing",
        layout(t.finish()),
        &["\"hl\"", "not in the layer", "sha256:"],
    );
}

#[test]
fn bad_blobs_are_refused() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let mut t = LayerTar::new();
    t.dir("data/", 0o755, 0)
        .file("data/big", &"z".repeat(100_000), 0o644, 0);
    let layer = t.finish();
    let images = |c| one_layer(layer.clone(), c);
    let second = |f: fn(&mut Blob)| {
        move |_: usize, l: usize, b: &mut Blob| {
            if l == 1 {
                f(b)
            }
        }
    };

    let lay = Layout::oci(
        &images(Comp::Gzip),
        second(|b| {
            let n = b.data.len() / 2;
            b.data[n] ^= 0xff;
        }),
    );
    refused(&s, "digest", lay, &["digest mismatch", "sha256:"]);

    let lay = Layout::oci(
        &images(Comp::Gzip),
        second(|b| b.data.truncate(b.data.len() / 2)),
    );
    refused(&s, "truncated", lay, &["truncated", "sha256:"]);

    // A corrupt stream whose digest and size the manifest agrees with.
    let lay = Layout::oci(&images(Comp::Garbage), second(|_| {}));
    refused(&s, "corrupt", lay, &["corrupt", "sha256:"]);

    let lay = Layout::oci(&images(Comp::None), second(|b| b.data.clear()));
    refused(&s, "missing", lay, &["missing from the archive", "sha256:"]);

    let lay = Layout::oci(
        &images(Comp::Gzip),
        second(|b| b.data.extend_from_slice(&[0u8; 4096])),
    );
    refused(
        &s,
        "bomb",
        lay,
        &["more bytes than the manifest says", "sha256:"],
    );
}

#[test]
fn other_commands_fail_in_one_line() {
    let s = Scratch::new();
    let store = s.path("store");
    for args in [
        vec!["image", "rm", "nothing:1"],
        vec!["image", "lowerdir", "nothing:1"],
        vec!["mount", "--image", "nothing:1", "/nonexistent"],
    ] {
        let mut a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        a.extend([OsStr::new("--store"), store.as_os_str()]);
        let (code, _, err) = plyfs(&a);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("no image named nothing:1"), "{err}");
    }
    let (code, _, err) = plyfs(&[
        OsStr::new("commit"),
        s.path("none").as_os_str(),
        OsStr::new("-o"),
        s.path("x.tar").as_os_str(),
    ]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
}
