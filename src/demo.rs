//! `plyfs demo`: the classic container image example, built in a temporary
//! directory, mounted, shown, changed, and taken down again.

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plyfs_core::{Config, Overlay};
use plyfs_fuse::{FuseOptions, MountSpec};

use crate::daemon::{Failure, check_fuse_device};

/// The layers, bottom first, as (directory name, description).
const LAYERS: [(&str, &str); 3] = [
    ("layer1", "base image: file1..file4"),
    ("layer2", "adds file5..file8"),
    ("layer3", "replaces file2, deletes file3"),
];

/// Unmounts and waits for the session thread, also on early return.
struct MountGuard {
    unmounter: plyfs_fuse::Unmounter,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    mountpoint: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.unmounter.unmount().is_err() {
            let _ = plyfs_sys::fs::umount(&self.mountpoint, true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure(format!("demo: {what}: {e}"))
}

pub fn run() -> Result<(), Failure> {
    check_fuse_device()?;
    let tmp = tempfile::Builder::new()
        .prefix("plyfs-demo-")
        .tempdir()
        .map_err(io("cannot create a temporary directory"))?;
    let root = tmp.path();
    build_layers(root)?;
    let (upper, work, merged) = (root.join("upper"), root.join("work"), root.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).map_err(io("cannot create a directory"))?;
    }
    let config = Config {
        // Top-most first, as lowerdir= lists them.
        lowers: LAYERS.iter().rev().map(|(n, _)| root.join(n)).collect(),
        upper: Some(upper.clone()),
        work: Some(work),
        ..Config::default()
    };
    println!("plyfs demo in {}", root.display());
    for (name, what) in LAYERS.iter().rev() {
        println!("  {name}: {what}");
    }
    println!("\n$ plyfs -o lowerdir=layer3:layer2:layer1,upperdir=upper,workdir=work merged");
    plyfs_sys::fs::umask(0);
    let overlay = Arc::new(Overlay::new(config).map_err(|e| Failure(format!("demo: {e}")))?);
    let spec = MountSpec {
        fsname: "plyfs-demo".into(),
        subtype: "plyfs".into(),
        default_permissions: true,
        ..MountSpec::default()
    };
    let mut mounted = plyfs_fuse::mount(overlay, &merged, &spec, FuseOptions::default())
        .map_err(|e| Failure(format!("demo: cannot mount at {}: {e}", merged.display())))?;
    let unmounter = mounted.unmounter();
    let thread = std::thread::spawn(move || mounted.run());
    let guard = MountGuard {
        unmounter,
        thread: Some(thread),
        mountpoint: merged.clone(),
    };

    println!("\nmerged view (each entry with the layer it comes from):");
    show_merged(&merged, root)?;

    println!("\n$ echo 'edited through the mount' >> merged/file1   # copy-up");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(merged.join("file1"))
        .map_err(io("cannot open file1"))?;
    std::io::Write::write_all(&mut f, b"edited through the mount\n")
        .map_err(io("cannot write file1"))?;
    drop(f);
    println!("$ rm merged/file5                                # whiteout");
    std::fs::remove_file(merged.join("file5")).map_err(io("cannot remove file5"))?;

    println!("\nmerged view now:");
    show_merged(&merged, root)?;
    println!("\nthe upper layer holds only the changes:");
    for name in sorted_names(&upper)? {
        let p = upper.join(&name);
        let md = std::fs::symlink_metadata(&p).map_err(io("cannot stat upper entry"))?;
        let what = if md.file_type().is_char_device() && md.rdev() == 0 {
            "whiteout (char device 0/0): hides the lower file".to_string()
        } else {
            format!("copied up, now reads {:?}", read(&p)?)
        };
        println!("  {:<8} {what}", name.to_string_lossy());
    }
    println!("\nthe lowers are unchanged:");
    println!(
        "  layer1/file1 still reads {:?}",
        read(&root.join("layer1/file1"))?
    );
    println!(
        "  layer2/file5 {}",
        if root.join("layer2/file5").exists() {
            "still exists"
        } else {
            "IS GONE (bug!)"
        }
    );
    drop(guard);
    println!("\nunmounted; {} removed", root.display());
    Ok(())
}

fn build_layers(root: &Path) -> Result<(), Failure> {
    let write =
        |p: PathBuf, s: String| std::fs::write(p, s).map_err(io("cannot write a layer file"));
    for (name, _) in LAYERS {
        std::fs::create_dir(root.join(name)).map_err(io("cannot create a layer"))?;
    }
    for i in 1..=4 {
        write(
            root.join(format!("layer1/file{i}")),
            format!("file{i} from the base image\n"),
        )?;
    }
    for i in 5..=8 {
        write(
            root.join(format!("layer2/file{i}")),
            format!("file{i} from layer2\n"),
        )?;
    }
    write(
        root.join("layer3/file2"),
        "file2, newer version from layer3\n".into(),
    )?;
    // A kernel-format whiteout deletes file3; where mknod is refused,
    // the OCI form does the same.
    let l3 = root.join("layer3");
    let dir = plyfs_sys::fs::open_path(&l3, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| Failure(format!("demo: cannot open layer3: {e}")))?;
    use std::os::fd::AsFd;
    if plyfs_sys::fs::mknodat(dir.as_fd(), std::ffi::OsStr::new("file3"), libc::S_IFCHR, 0).is_err()
    {
        write(l3.join(".wh.file3"), String::new())?;
    }
    Ok(())
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>, Failure> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .map_err(io("cannot read a directory"))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    Ok(names)
}

fn read(p: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(p).map_err(io("cannot read a file"))
}

/// Lists the merged directory. An entry's inode number is the one of the
/// object that provides it (a copy keeps its origin's), so comparing
/// numbers names the layer.
fn show_merged(merged: &Path, root: &Path) -> Result<(), Failure> {
    for name in sorted_names(merged)? {
        let md = std::fs::symlink_metadata(merged.join(&name)).map_err(io("cannot stat"))?;
        let mut from = "?".to_string();
        for (layer, _) in LAYERS.iter().rev() {
            if let Ok(l) = std::fs::symlink_metadata(root.join(layer).join(&name))
                && l.ino() == md.ino()
            {
                from = layer.to_string();
                break;
            }
        }
        if std::fs::symlink_metadata(root.join("upper").join(&name)).is_ok() {
            from = format!("upper (copied up from {from}, same inode number)");
        }
        let content = read(&merged.join(&name))?;
        println!(
            "  {:<8} {:<40} from {from}",
            name.to_string_lossy(),
            format!("{:?}", content.trim_end())
        );
    }
    Ok(())
}
