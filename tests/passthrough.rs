//! FUSE passthrough: with the privilege for it, file data goes straight
//! between the kernel and the layers, never through the daemon. Without
//! it, the kernel caches writes (writeback cache).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use common::*;

fn daemon_io(pid: u32, counter: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(counter).map(|v| v.trim().parse().unwrap()))
        .unwrap()
}

fn daemon_reads(pid: u32) -> u64 {
    daemon_io(pid, "syscr:")
}

fn setup(s: &Scratch, extra: &str) -> PlyfsMount {
    let l1 = s.mkdir("l1");
    std::fs::write(l1.join("data"), vec![9u8; 64 << 20]).unwrap();
    std::fs::write(l1.join("small"), "lower text").unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        l1.display(),
        s.mkdir("upper").display(),
        s.mkdir("work").display()
    );
    PlyfsMount::new(&opts, &s.path("mnt"))
}

fn read_all(p: &std::path::Path) -> usize {
    let mut v = Vec::new();
    std::fs::File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v.len()
}

#[test]
fn file_data_bypasses_the_daemon() {
    if !require_mount_privileges() {
        return;
    }
    // Read-only: every file in passthrough.
    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    std::fs::write(l1.join("data"), vec![9u8; 64 << 20]).unwrap();
    let ro = PlyfsMount::new(&format!("lowerdir={}", l1.display()), &s.path("ro"));
    let before = daemon_reads(ro.pid());
    assert_eq!(read_all(&ro.mnt.join("data")), 64 << 20);
    let reads = daemon_reads(ro.pid()) - before;
    assert!(
        reads < 100,
        "the daemon made {reads} read calls for 64 MiB of reads"
    );
    drop(ro);

    // Writable: a file once copied up is read and written in passthrough.
    let s = Scratch::new();
    let ply = setup(&s, "");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(ply.mnt.join("data"))
        .unwrap();
    drop(f);
    let before = daemon_reads(ply.pid());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(ply.mnt.join("data"))
        .unwrap();
    f.write_all_at(&vec![1u8; 8 << 20], 0).unwrap();
    drop(f);
    assert_eq!(read_all(&ply.mnt.join("data")), 64 << 20);
    let reads = daemon_reads(ply.pid()) - before;
    assert!(
        reads < 100,
        "the daemon made {reads} read calls for 64 MiB of reads"
    );
    let mut head = [0u8; 2];
    std::fs::File::open(ply.mnt.join("data"))
        .unwrap()
        .read_exact_at(&mut head, (8 << 20) - 1)
        .unwrap();
    assert_eq!(head, [1, 9]);
}

#[test]
fn without_passthrough_the_daemon_serves_the_data() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let ply = setup(&s, ",passthrough=0");
    let before = daemon_reads(ply.pid());
    assert_eq!(read_all(&ply.mnt.join("data")), 64 << 20);
    let reads = daemon_reads(ply.pid()) - before;
    assert!(
        reads >= 64,
        "only {reads} read calls: passthrough=0 not honoured?"
    );
}

#[test]
fn writing_while_the_lower_file_is_open_for_reading() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let ply = setup(&s, "");
    // A reader holds the lower file (in passthrough).
    let reader = std::fs::File::open(ply.mnt.join("small")).unwrap();
    // A writer opens it: copy-up, and another real file behind the inode.
    append(&ply.mnt.join("small"), b" + upper");
    assert_eq!(
        std::fs::read_to_string(ply.mnt.join("small")).unwrap(),
        "lower text + upper"
    );
    drop(reader);
    // With the reader gone, opens use the copy in passthrough again.
    assert_eq!(
        std::fs::read_to_string(ply.mnt.join("small")).unwrap(),
        "lower text + upper"
    );
    append(&ply.mnt.join("small"), b"!");
    assert_eq!(
        std::fs::read_to_string(ply.mnt.join("small")).unwrap(),
        "lower text + upper!"
    );
}

#[test]
fn a_read_only_open_first_does_not_stop_later_writers() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let ply = setup(&s, "");
    // An upper file, in passthrough, first opened read-only...
    std::fs::write(ply.mnt.join("new"), "v1").unwrap();
    let reader = std::fs::File::open(ply.mnt.join("new")).unwrap();
    // ...then for writing while the reader still holds it.
    append(&ply.mnt.join("new"), b" v2");
    let mut got = String::new();
    (&reader).read_to_string(&mut got).unwrap();
    assert_eq!(got, "v1 v2");
    // O_DIRECT opens work too.
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(ply.mnt.join("data"))
        .unwrap();
    drop(direct);
}

/// 4096 one-byte appends, then a partial overwrite through a write-only
/// open; returns the daemon's write calls for the appends. A WRITE request
/// costs two (the reply and the write to the upper file); the kernel asks
/// nothing else per write(2) (FUSE_HANDLE_KILLPRIV_V2: no
/// `security.capability` lookups).
fn small_writes(ply: &PlyfsMount) -> u64 {
    let before = daemon_io(ply.pid(), "syscw:");
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(ply.mnt.join("small"))
        .unwrap();
    for _ in 0..4096 {
        w.write_all(b"+").unwrap();
    }
    drop(w);
    let writes = daemon_io(ply.pid(), "syscw:") - before;
    // The kernel fills the rest of the page through this write-only open.
    std::fs::OpenOptions::new()
        .write(true)
        .open(ply.mnt.join("small"))
        .unwrap()
        .write_all_at(b"X", 2)
        .unwrap();
    let want = format!("loXer text{}", "+".repeat(4096));
    assert_eq!(
        std::fs::read_to_string(ply.mnt.join("small")).unwrap(),
        want
    );
    assert_eq!(
        std::fs::metadata(ply.mnt.join("small")).unwrap().len(),
        want.len() as u64
    );
    writes
}

#[test]
fn without_passthrough_the_kernel_caches_writes() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let ply = setup(&s, ",passthrough=0");
    let writes = small_writes(&ply);
    assert!(
        writes < 500,
        "the daemon made {writes} write calls for 4096 one-byte appends"
    );
    // What the kernel cached reached the upper layer.
    drop(ply);
    let upper = std::fs::read_to_string(s.path("upper/small")).unwrap();
    assert_eq!(upper, format!("loXer text{}", "+".repeat(4096)));

    let s = Scratch::new();
    let ply = setup(&s, ",passthrough=0,writeback=0");
    let writes = small_writes(&ply);
    assert!(
        writes >= 2 * 4096,
        "only {writes} write calls: writeback=0 not honoured?"
    );
}
