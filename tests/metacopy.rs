//! Metacopy and data-only layers, against the kernel's overlayfs: uppers
//! the kernel wrote with `metacopy=on` read right through plyfs, plyfs's
//! `metacopy=on` copies metadata only (and the kernel reads what it
//! wrote), the first write copies the data, data-only layers are reached
//! only through redirects, and a forged redirect cannot leave the layers.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn has_attr(p: &Path, name: &str) -> bool {
    xattr::get(p, name).ok().flatten().is_some()
}

/// The kernel copies metadata only, renames the file (a redirect to its
/// data); plyfs on the same layers reads the data, not zeros.
#[test]
fn a_kernel_metacopy_upper_reads_right() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let data = random_bytes(100_000, 1);
    std::fs::create_dir_all(s.path("l")).unwrap();
    std::fs::write(s.path("l/f"), &data).unwrap();
    std::fs::write(s.path("l/g"), &data[..5000]).unwrap();
    let (u, w) = (s.mkdir("u"), s.mkdir("w"));
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.path("l").display(),
        u.display(),
        w.display()
    );
    {
        let k = KernelMount::new(
            &format!("{opts},metacopy=on,redirect_dir=on,index=on"),
            &s.path("k"),
        );
        std::os::unix::fs::chown(k.mnt.join("f"), Some(1234), None).unwrap();
        std::fs::set_permissions(k.mnt.join("g"), PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::create_dir(k.mnt.join("d")).unwrap();
        std::fs::rename(k.mnt.join("g"), k.mnt.join("d/g2")).unwrap();
    }
    assert!(has_attr(&u.join("f"), "trusted.overlay.metacopy"));
    assert!(has_attr(&u.join("d/g2"), "trusted.overlay.redirect"));
    let ply = PlyfsMount::new(&opts, &s.path("m"));
    let f = ply.mnt.join("f");
    assert_eq!(std::fs::read(&f).unwrap(), data);
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), 1234);
    assert_eq!(std::fs::read(ply.mnt.join("d/g2")).unwrap(), &data[..5000]);
    assert!(!ply.mnt.join("g").exists());
    // Blocks are the data's, as the kernel reports them.
    let lower_blocks = std::fs::metadata(s.path("l/f")).unwrap().blocks();
    assert_eq!(std::fs::metadata(&f).unwrap().blocks(), lower_blocks);
}

fn check_reads(f: &Path, data: &[u8]) {
    assert_eq!(std::fs::read(f).unwrap(), data, "{}", f.display());
    // Through a seek and a short read, and through copy_file_range.
    let mut file = std::fs::File::open(f).unwrap();
    file.seek(SeekFrom::Start(777)).unwrap();
    let mut buf = [0u8; 100];
    file.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &data[777..877]);
    let copy = f.with_file_name("copied");
    std::fs::copy(f, &copy).unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), data);
    std::fs::remove_file(&copy).unwrap();
}

/// plyfs's own `metacopy=on`: metadata changes copy no data (a sparse
/// upper file with the mark), every read path sees the lower's data, the
/// kernel reads the same upper, and the first write copies the data in.
#[test]
fn metacopy_on_copies_metadata_only_until_the_first_write() {
    if !require_mount_privileges() {
        return;
    }
    for extra in ["", ",passthrough=0"] {
        let s = Scratch::new();
        let data = random_bytes(1 << 20, 2);
        std::fs::create_dir_all(s.path("l")).unwrap();
        std::fs::write(s.path("l/f"), &data).unwrap();
        std::fs::write(s.path("l/x"), &data[..4096]).unwrap();
        let (u, w) = (s.mkdir("u"), s.mkdir("w"));
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            s.path("l").display(),
            u.display(),
            w.display()
        );
        {
            let ply = PlyfsMount::new(&format!("{opts},metacopy=on{extra}"), &s.path("m"));
            let f = ply.mnt.join("f");
            std::os::unix::fs::chown(&f, Some(77), Some(78)).unwrap();
            std::fs::set_permissions(&f, PermissionsExt::from_mode(0o640)).unwrap();
            xattr::set(ply.mnt.join("x"), "user.tag", b"v").unwrap();
            let uf = u.join("f");
            assert!(has_attr(&uf, "trusted.overlay.metacopy"), "{extra}");
            let st = std::fs::metadata(&uf).unwrap();
            assert_eq!(
                (st.len(), st.uid(), st.mode() & 0o7777),
                (1 << 20, 77, 0o640)
            );
            assert!(st.blocks() < 64, "no data copied: {} blocks", st.blocks());
            check_reads(&f, &data);
            assert!(has_attr(&u.join("x"), "trusted.overlay.metacopy"));
            assert_eq!(
                xattr::get(ply.mnt.join("x"), "user.tag").unwrap(),
                Some(b"v".to_vec())
            );
        }
        // The kernel reads plyfs's metacopy upper.
        {
            let k = KernelMount::new(
                &format!(
                    "lowerdir={},upperdir={},workdir={},metacopy=on,redirect_dir=on,index=on",
                    s.path("l").display(),
                    u.display(),
                    s.mkdir("kw").display()
                ),
                &s.path("k"),
            );
            assert_eq!(std::fs::read(k.mnt.join("f")).unwrap(), data);
            assert_eq!(std::fs::metadata(k.mnt.join("f")).unwrap().uid(), 77);
        }
        // The first write copies the data into the upper file and drops
        // the mark; the rest of the file is the lower's.
        let ply = PlyfsMount::new(&format!("{opts},metacopy=on{extra}"), &s.path("m"));
        let f = ply.mnt.join("f");
        let mut w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        w.seek(SeekFrom::Start(10)).unwrap();
        w.write_all(b"XY").unwrap();
        drop(w);
        let mut expect = data.clone();
        expect[10..12].copy_from_slice(b"XY");
        check_reads(&f, &expect);
        drop(ply);
        assert!(!has_attr(&u.join("f"), "trusted.overlay.metacopy"));
        assert_eq!(std::fs::read(u.join("f")).unwrap(), expect);
        // Truncation copies the data too.
        let ply = PlyfsMount::new(&format!("{opts},metacopy=on{extra}"), &s.path("m"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(ply.mnt.join("x"))
            .unwrap()
            .set_len(100)
            .unwrap();
        assert_eq!(std::fs::read(ply.mnt.join("x")).unwrap(), &data[..100]);
    }
}

/// A composefs-like stack: metadata layers whose files are metacopy with
/// redirects into data-only layers (`lowerdir=L1:L2::D1::D2`); the data
/// layers are never looked up by name.
#[test]
fn data_only_layers_match_the_kernel() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let blob = |layer: &str, name: &str, seed: u64, len: usize| {
        let p = s.path(&format!("{layer}/objects/{name}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, random_bytes(len, seed)).unwrap();
        len
    };
    let meta = |layer: &str, rel: &str, len: usize, redirect: &str| {
        let p = s.path(&format!("{layer}/{rel}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::File::create(&p)
            .unwrap()
            .set_len(len as u64)
            .unwrap();
        xattr::set(&p, "trusted.overlay.metacopy", b"").unwrap();
        xattr::set(&p, "trusted.overlay.redirect", redirect.as_bytes()).unwrap();
    };
    let a = blob("d1", "aa", 3, 70_000);
    let b = blob("d2", "bb", 4, 9_000);
    let c = blob("d2", "cc", 5, 123);
    meta("l1", "usr/bin/a", a, "/objects/aa");
    meta("l1", "etc/b", b, "/objects/bb");
    meta("l2", "etc/c", c, "/objects/cc");
    LayerBuilder::new(s.path("l2")).file("etc/plain", "plain");
    // Names in data-only layers are not in the union.
    LayerBuilder::new(s.path("d2")).file("visible-not", "x");
    let lowers = format!(
        "lowerdir={}:{}::{}::{}",
        s.path("l1").display(),
        s.path("l2").display(),
        s.path("d1").display(),
        s.path("d2").display()
    );
    let k = KernelMount::new(
        &format!("{lowers},metacopy=on,redirect_dir=follow"),
        &s.path("k"),
    );
    let ply = PlyfsMount::new(&lowers, &s.path("m"));
    assert_same_trees(&snapshot(&k.mnt), &snapshot(&ply.mnt), Compare::default());
    assert!(!ply.mnt.join("visible-not").exists() && !ply.mnt.join("objects").exists());
    for rel in ["usr/bin/a", "etc/b", "etc/c"] {
        assert_eq!(
            std::fs::read(ply.mnt.join(rel)).unwrap(),
            std::fs::read(k.mnt.join(rel)).unwrap(),
            "{rel}"
        );
    }
}

/// A forged metacopy redirect is followed only inside the mount's layers:
/// `..` is refused, and a symlink on the way is not followed.
#[test]
fn forged_metacopy_redirects_stay_inside_the_layers() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let secret = std::fs::read("/etc/passwd").unwrap();
    let forge = |rel: &str, redirect: &str| {
        let p = s.path(&format!("u/{rel}"));
        std::fs::File::create(&p)
            .unwrap()
            .set_len(secret.len() as u64)
            .unwrap();
        xattr::set(&p, "trusted.overlay.metacopy", b"").unwrap();
        xattr::set(&p, "trusted.overlay.redirect", redirect.as_bytes()).unwrap();
    };
    LayerBuilder::new(s.path("l"))
        .file("ok", "ok")
        .symlink("etc", "/etc");
    LayerBuilder::new(s.path("d")).symlink("etc", "/etc");
    s.mkdir("u");
    forge("up", "/../../../../../../etc/passwd");
    forge("through_lower_link", "/etc/passwd");
    forge("absolute", "//etc/passwd");
    let opts = format!(
        "lowerdir={}::{},upperdir={},workdir={}",
        s.path("l").display(),
        s.path("d").display(),
        s.path("u").display(),
        s.mkdir("w").display()
    );
    // Make the upper impure, as a real one holding copies would be.
    xattr::set(s.path("u"), "trusted.overlay.impure", b"y").unwrap();
    let ply = PlyfsMount::new(&opts, &s.path("m"));
    for name in ["up", "through_lower_link", "absolute"] {
        match std::fs::read(ply.mnt.join(name)) {
            Ok(got) => assert_ne!(got, secret, "{name} leaked a file outside the layers"),
            Err(e) => assert!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::EACCES)
                ),
                "{name}: {e}"
            ),
        }
    }
    assert_eq!(std::fs::read(ply.mnt.join("ok")).unwrap(), b"ok");
}
