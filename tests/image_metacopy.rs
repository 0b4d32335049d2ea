//! Commit of a metacopy upper: the kernel's overlayfs with `metacopy=on`
//! copies only the inode up on chown; `plyfs commit` must write the data
//! from the lower, which it reads through plyfs-core's union view.

mod common;

use std::ffi::OsStr;
use std::io::Read;

use common::*;

#[test]
fn commit_resolves_a_kernel_metacopy_file() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    let (upper, work, mnt) = (s.mkdir("upper"), s.mkdir("work"), s.mkdir("mnt"));
    LayerBuilder::new(&lower).file("data/file", "the lower's data\n");
    {
        let _k = KernelMount::new(
            &format!(
                "lowerdir={},upperdir={},workdir={},metacopy=on,redirect_dir=on,index=on",
                lower.display(),
                upper.display(),
                work.display()
            ),
            &mnt,
        );
        std::os::unix::fs::chown(mnt.join("data/file"), Some(1234), Some(1234)).unwrap();
    }
    assert!(
        xattr::get(upper.join("data/file"), "trusted.overlay.metacopy")
            .unwrap()
            .is_some(),
        "the kernel made no metacopy file"
    );
    let out = s.path("layer.tar");
    let (code, _, err) = plyfs(&[
        OsStr::new("commit"),
        upper.as_os_str(),
        OsStr::new("--lowerdir"),
        lower.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    let mut tar = tar::Archive::new(std::fs::File::open(&out).unwrap());
    let mut found = false;
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("data/file") {
            assert_eq!(e.header().uid().unwrap(), 1234);
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            assert_eq!(data, "the lower's data\n");
            found = true;
        }
    }
    assert!(found, "data/file is not in the layer");
}
