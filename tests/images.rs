//! Images without a container engine: archives made here (the `tar`
//! crate) and by podman, imported into a plyfs store, mounted, changed,
//! committed, saved and loaded back into podman; every view compared with
//! podman's (`podman load` + `podman mount`) or the kernel's overlayfs.
//! Also as a plain user through fusermount3, and hostile archives.
//!
//! Needs root, podman and fuse3; under CI=true a missing one fails.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::images::*;
use common::podman::{Mode, MountProgram, PodmanStore};
use common::users::{TAR_CREATE, UserMounts, ci_user, require_tools, run_ok, tar_snapshot};
use common::*;

const TOOLS: &[&str] = &["podman", "tar", "setpriv", "fusermount3", "useradd"];

fn ready() -> bool {
    require_mount_privileges() && require_tools(TOOLS)
}

/// The rootfs podman shows for `image` after `podman load -i archive`.
fn podman_tree(store: &PodmanStore, archive: &Path, image: &str, dest: &Path) -> Tree {
    store.podman_ok(&[os("load"), os("-q"), os("-i"), archive.as_os_str()]);
    let ctr = store.podman_ok(&["create", image, "/bin/true"]);
    let mp = store.mount(&ctr);
    let t = store.snapshot(&mp, dest);
    store.unmount(&ctr);
    t
}

#[test]
fn imported_images_mount_as_podman_shows_them() {
    if !ready() {
        return;
    }
    let s = open_scratch();
    let (arch_a, arch_b) = (
        write_archive(&s, "a.tar", &[image_a()]),
        write_archive(&s, "b.tar", &[image_b()]),
    );
    let store = s.path("store");
    // Two imports at once: the lock keeps the store whole.
    let spawn = |arch: &Path| {
        Command::new(PLYFS)
            .args(["image", "import", "--store"])
            .arg(&store)
            .arg(arch)
            .output()
            .unwrap()
    };
    let (oa, ob) = std::thread::scope(|sc| {
        let ha = sc.spawn(|| spawn(&arch_a));
        let hb = sc.spawn(|| spawn(&arch_b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    for o in [&oa, &ob] {
        assert!(
            o.status.success(),
            "import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let ls = plyfs_ok(&store, &[os("image"), os("ls")]);
    assert!(ls.contains(A) && ls.contains(B), "{ls}");
    // The base layer is stored once: 3 + 2 layers, 4 distinct.
    let layers = std::fs::read_dir(store.join("layers")).unwrap().count();
    assert_eq!(layers, 4, "layers in the store");

    let pstore = PodmanStore::new(&s.path("podman"), Mode::Root, MountProgram::Kernel, false);
    let podman_a = podman_tree(&pstore, &arch_a, A, &s.path("podman-a"));

    // plyfs's own mount of the image, and the lowerdir= it prints.
    let mp = s.path("mnt-a");
    {
        let _m = mount_image(&store, A, None, &mp);
        same(
            "plyfs mount vs podman mount of the same archive",
            &podman_a,
            &tree_of(&mp, &s.path("plyfs-a")),
        );
        let err = std::fs::write(mp.join("etc/motd"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    }
    let lowerdir = plyfs_ok(&store, &[os("image"), os("lowerdir"), os(A)]);
    let _m = PlyfsMount::new(lowerdir.trim(), &s.path("mnt-lowerdir"));
    same(
        "a mount of image lowerdir",
        &podman_a,
        &tree_of(&s.path("mnt-lowerdir"), &s.path("ld-a")),
    );

    // podman save (docker-archive) of the image podman loaded, imported.
    let saved = s.path("podman-saved.tar");
    pstore.podman_ok(&[
        os("save"),
        os("-q"),
        os("--format"),
        os("oci-archive"),
        os("-o"),
        saved.as_os_str(),
        os(A),
    ]);
    let store2 = s.path("store2");
    plyfs_ok(&store2, &[os("image"), os("import"), saved.as_os_str()]);
    let _m2 = mount_image(&store2, A, None, &s.path("mnt-saved"));
    same(
        "plyfs mount of podman save",
        &podman_a,
        &tree_of(&s.path("mnt-saved"), &s.path("saved-a")),
    );

    // Kernel whiteouts: the kernel's overlayfs mounts the layers alike.
    let store3 = s.path("store3");
    plyfs_ok(
        &store3,
        &[
            os("image"),
            os("import"),
            os("--whiteout-format"),
            os("kernel"),
            arch_a.as_os_str(),
        ],
    );
    let lowerdir = plyfs_ok(&store3, &[os("image"), os("lowerdir"), os(A)]);
    let _k = KernelMount::new(lowerdir.trim(), &s.path("mnt-kernel"));
    same(
        "kernel overlayfs over kernel-format layers",
        &podman_a,
        &tree_of(&s.path("mnt-kernel"), &s.path("kernel-a")),
    );

    // rm: the layers only A used go, the shared base stays for B.
    plyfs_ok(&store, &[os("image"), os("rm"), os(A)]);
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 2);
    plyfs_ok(&store, &[os("image"), os("rm"), os(B)]);
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 0);
}

#[test]
fn round_trip_mount_change_commit_save_load() {
    if !ready() {
        return;
    }
    let s = open_scratch();
    let arch = write_archive(&s, "a.tar", &[image_a()]);
    let store = s.path("store");
    plyfs_ok(&store, &[os("image"), os("import"), arch.as_os_str()]);
    let (upper, mp) = (s.path("ctr/upper"), s.path("ctr/mnt"));
    let changed = {
        let _m = mount_image(&store, A, Some(&upper), &mp);
        run_ok(
            Command::new("sh").args(["-c", CHANGES]).current_dir(&mp),
            "the changes in the mount",
        );
        tree_of(&mp, &s.path("changed"))
    };
    let diff = plyfs_ok(
        &store,
        &[os("diff"), upper.as_os_str(), os("--image"), os(A)],
    );
    for line in [
        "A /newfile",
        "C /etc/motd",
        "D /etc/shadow",
        "D /deep",
        "D /opt/app",
        "A /opt/app-renamed",
        "C /var/old",
        "A /made/sub/f",
        "A /made-hardlink",
    ] {
        assert!(
            diff.lines().any(|l| l == line),
            "diff lacks {line:?}:\n{diff}"
        );
    }
    // The same upper gives the same bytes.
    let commit = |out: &Path| {
        plyfs_ok(
            &store,
            &[
                os("commit"),
                upper.as_os_str(),
                os("--image"),
                os(A),
                os("-o"),
                out.as_os_str(),
            ],
        )
    };
    let (one, two) = (commit(&s.path("l1.tar")), commit(&s.path("l2.tar")));
    assert_eq!(one, two);
    assert_eq!(
        std::fs::read(s.path("l1.tar")).unwrap(),
        std::fs::read(s.path("l2.tar")).unwrap()
    );
    let listing = run_ok(
        Command::new("tar").arg("-tvf").arg(s.path("l1.tar")),
        "tar -t",
    );
    for want in [
        "etc/.wh.shadow",
        ".wh.deep",
        "opt/.wh.app",
        "opt/app-renamed/.wh..wh..opq",
        "var/old/.wh..wh..opq",
        "newfile link to made-hardlink",
    ] {
        assert!(listing.contains(want), "layer lacks {want}:\n{listing}");
    }

    let a2 = "localhost/plyfs-test/a:2";
    let out = plyfs_ok(
        &store,
        &[
            os("commit"),
            upper.as_os_str(),
            os("--image"),
            os(A),
            os("--tag"),
            os(a2),
            os("--zstd"),
        ],
    );
    assert!(
        out.contains("diff-id sha256:") && out.contains("digest  sha256:"),
        "{out}"
    );
    {
        let mp2 = s.path("mnt-a2");
        let _m = mount_image(&store, a2, None, &mp2);
        same(
            "the committed image vs the changed mount",
            &changed,
            &tree_of(&mp2, &s.path("a2")),
        );
    }
    let saved = s.path("a2-saved.tar");
    plyfs_ok(
        &store,
        &[os("image"), os("save"), os(a2), saved.as_os_str()],
    );
    let pstore = PodmanStore::new(&s.path("podman"), Mode::Root, MountProgram::Kernel, false);
    let podman = podman_tree(&pstore, &saved, a2, &s.path("podman-a2"));
    same(
        "podman load of plyfs image save vs the changed mount",
        &changed,
        &podman,
    );
}

#[test]
fn plain_user_imports_mounts_and_commits() {
    if !ready() {
        return;
    }
    let s = open_scratch();
    let user = ci_user();
    let arch = write_archive(&s, "a.tar", &[readable_image()]);
    let bin = s.mkdir("bin");
    std::fs::copy(PLYFS, bin.join("plyfs")).unwrap();
    std::fs::set_permissions(bin.join("plyfs"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = s.mkdir("user");
    user.chown_tree(&base);
    let home = base.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let store = base.join("store");
    let plyfs = |args: &[&OsStr]| {
        let mut c = user.command(bin.join("plyfs"), &home);
        c.args(args)
            .env("XDG_DATA_HOME", base.join("data"))
            .env("PLYFS_STORE", &store);
        run_ok(&mut c, &format!("plyfs {args:?} as {}", user.name))
    };
    // Root's view of the image is the reference.
    let root_store = s.path("root-store");
    plyfs_ok(&root_store, &[os("image"), os("import"), arch.as_os_str()]);
    let reference = {
        let _m = mount_image(&root_store, A, None, &s.path("mnt-root"));
        tree_of(&s.path("mnt-root"), &s.path("ref"))
    };

    plyfs(&[os("image"), os("import"), arch.as_os_str()]);
    let (upper, mp, mp2) = (base.join("upper"), base.join("mnt"), base.join("mnt2"));
    let needle = base.to_string_lossy().into_owned();
    let _guard = UserMounts {
        user,
        home: home.clone(),
        mps: vec![mp.clone(), mp2.clone()],
        needle,
    };
    let as_user_tar = |dir: &Path, dest: &str| {
        tar_snapshot(
            user.command("sh", &home)
                .args(["-c", &format!("cd \"$1\" && {TAR_CREATE}"), "sh"])
                .arg(dir),
            &s.path(dest),
        )
    };
    std::fs::create_dir_all(&mp).unwrap();
    user.chown_tree(&base);
    plyfs(&[
        os("mount"),
        os("--image"),
        os(A),
        os("--upper"),
        upper.as_os_str(),
        mp.as_os_str(),
    ]);
    // Owners and devices come from the override attribute (which a
    // symlink cannot carry: it shows its real owner, as with
    // fuse-overlayfs).
    let mut view = as_user_tar(&mp, "user-view");
    for o in view.objs.values_mut().filter(|o| o.kind == "symlink") {
        (o.uid, o.gid) = (0, 0);
    }
    same("the plain user's mount vs root's", &reference, &view);
    run_ok(
        user.command("sh", &home).args(["-c", "cd \"$1\"/work && echo new > newfile && echo more >> notes && rm -r deep && mv sub sub2 && mkdir made", "sh"]).arg(&mp),
        "the user's changes",
    );
    let changed = as_user_tar(&mp, "user-changed");
    run_ok(
        user.command("fusermount3", &home).arg("-u").arg(&mp),
        "fusermount3 -u",
    );
    let out = plyfs(&[
        os("commit"),
        upper.as_os_str(),
        os("--image"),
        os(A),
        os("--tag"),
        os("mine:1"),
    ]);
    assert!(out.contains("image"), "{out}");
    std::fs::create_dir_all(&mp2).unwrap();
    user.chown_tree(&mp2);
    plyfs(&[os("mount"), os("--image"), os("mine:1"), mp2.as_os_str()]);
    same(
        "the user's committed image vs the changed mount",
        &changed,
        &as_user_tar(&mp2, "user-mine"),
    );
    run_ok(
        user.command("fusermount3", &home).arg("-u").arg(&mp2),
        "fusermount3 -u",
    );
}

/// `image rm` of a mounted image keeps the layers the mount uses until it
/// ends; a later `image rm` collects them.
#[test]
fn removing_a_mounted_image_keeps_its_layers_until_unmount() {
    if !ready() {
        return;
    }
    let s = open_scratch();
    let arch = write_archive(&s, "ab.tar", &[image_a(), image_b()]);
    let store = s.path("store");
    plyfs_ok(&store, &[os("image"), os("import"), arch.as_os_str()]);
    let layers = || std::fs::read_dir(store.join("layers")).unwrap().count();
    let before = layers();
    let mp = s.path("mnt");
    {
        let _m = mount_image(&store, A, None, &mp);
        let mut c = Command::new(PLYFS);
        c.args(["image", "rm", A, "--store"]).arg(&store);
        let out = c.output().unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("stay while a mount uses them"), "{err}");
        assert_eq!(layers(), before, "nothing removed under the mount");
        assert_eq!(
            std::fs::read_to_string(mp.join("etc/motd")).unwrap(),
            "hello v2\n"
        );
    }
    // The mount has ended: removing the other image collects everything.
    plyfs_ok(&store, &[os("image"), os("rm"), os(B)]);
    assert_eq!(layers(), 0);
}
