//! Rootless mounts: inside a user namespace plyfs may not set trusted.*
//! attributes, so it writes the rootless formats (user.overlay.*), which
//! plyfs and the kernel's `userxattr` mode read back.

mod common;

use std::process::Command;

use common::ops::walk_xattrs;
use common::*;

#[test]
fn user_namespace_mount_writes_user_xattr_markers() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = LayerBuilder::new(s.path("l1"));
    l1.file("gone", "g")
        .file("d/old", "o")
        .file("f", "lower f")
        .file("keep/x", "x")
        .file("mv/inner", "i");
    let (upper, work, mnt) = (s.mkdir("upper"), s.mkdir("work"), s.mkdir("mnt"));
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.path("l1").display(),
        upper.display(),
        work.display()
    );
    // Everything happens inside one user and mount namespace; the listing
    // of the mount is printed before it goes away.
    let script = format!(
        r#"set -e
{plyfs} -o '{opts}' {mnt}
trap 'umount {mnt}' EXIT
cd {mnt}
rm gone
rm d/old; rmdir d; mkdir d; echo new > d/new
echo more >> f
mkdir fresh && echo y > fresh/y
find . -printf '%p %y %s\n' | sort
cd /
"#,
        plyfs = PLYFS,
        mnt = mnt.display()
    );
    let out = Command::new("unshare")
        .args([
            "-U",
            "-r",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("./d/new f") && !stdout.contains("./gone") && !stdout.contains("./d/old"),
        "{stdout}"
    );

    // The markers are in the user namespace, none in trusted.
    let xattrs = walk_xattrs(&upper);
    let all: Vec<&String> = xattrs.iter().flat_map(|(_, n)| n).collect();
    assert!(all.iter().all(|n| !n.starts_with("trusted.")), "{xattrs:?}");
    assert_eq!(
        xattr::get(upper.join("d"), "user.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    let wh = std::fs::symlink_metadata(upper.join("gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));

    // The kernel in userxattr mode reads the same tree back, and so does
    // plyfs mounted again.
    let k = KernelMount::new(&format!("{opts},userxattr"), &s.path("kmnt"));
    let p = PlyfsMount::new(&opts, &s.path("pmnt"));
    assert_same_trees(&snapshot(&k.mnt), &snapshot(&p.mnt), Compare::default());
    assert_eq!(
        std::fs::read_to_string(p.mnt.join("f")).unwrap(),
        "lower fmore\n"
    );
    assert!(
        std::fs::read_dir(p.mnt.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .eq(["new"])
    );

    // Directories move with user.overlay.redirect (the kernel would not
    // follow it in userxattr mode: plyfs alone reads it).
    drop(k);
    drop(p);
    let script = format!(
        "set -e\n{PLYFS} -o '{opts}' {mnt}\ntrap 'umount {mnt}' EXIT\nmv {mnt}/mv {mnt}/moved\ncat {mnt}/moved/inner\n",
        mnt = mnt.display()
    );
    let out = Command::new("unshare")
        .args([
            "-U",
            "-r",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "i");
    assert_eq!(
        xattr::get(upper.join("moved"), "user.overlay.redirect").unwrap(),
        Some(b"mv".to_vec())
    );
    let p = PlyfsMount::new(&opts, &s.path("pmnt"));
    assert_eq!(
        std::fs::read_to_string(p.mnt.join("moved/inner")).unwrap(),
        "i"
    );
    assert!(!p.mnt.join("mv").exists());
}
