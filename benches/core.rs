//! Micro-benchmarks of the core's hot path, without a mount: lookups that
//! hit, lookups that miss in a 1-layer and a 64-layer stack (uncached,
//! and with the lower directories not read yet), and the merged readdir of
//! a 100k-entry directory.
//!
//! cargo bench --bench core

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use plyfs_core::{Config, Overlay, ROOT_INO};

/// `n` layers with a directory `d`: the bottom one holds `f0`..`f999`,
/// the others ten names of their own each.
fn stack(root: &Path, n: usize) -> Vec<PathBuf> {
    let mut layers = Vec::new();
    for i in (0..n).rev() {
        let l = root.join(format!("l{n}-{i}"));
        std::fs::create_dir_all(l.join("d")).unwrap();
        if i == 0 {
            for f in 0..1000 {
                std::fs::write(l.join(format!("d/f{f}")), "x").unwrap();
            }
        } else {
            for f in 0..10 {
                std::fs::write(l.join(format!("d/l{i}_{f}")), "x").unwrap();
            }
        }
        layers.push(l);
    }
    layers
}

fn overlay(lowers: &[PathBuf]) -> Overlay {
    Overlay::new(Config {
        lowers: lowers.to_vec(),
        ..Config::default()
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::Builder::new()
        .prefix("plyfs-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let stacks: Vec<(usize, Vec<PathBuf>)> =
        [1, 64].iter().map(|&n| (n, stack(tmp.path(), n))).collect();

    let ov = overlay(&stacks[0].1);
    let d = ov.lookup(ROOT_INO, OsStr::new("d")).unwrap().ino;
    c.bench_function("lookup_hit", |b| {
        b.iter(|| ov.lookup(d, OsStr::new("f500")).unwrap())
    });

    for (n, lowers) in &stacks {
        let ov = overlay(lowers);
        let d = ov.lookup(ROOT_INO, OsStr::new("d")).unwrap().ino;
        let _ = ov.lookup(d, OsStr::new("warm-the-listing"));
        let mut i = 0u64;
        c.bench_function(&format!("lookup_miss/{n}_layers"), |b| {
            b.iter(|| {
                // A name never asked for: no cached answer to give.
                i += 1;
                let name = OsString::from(format!("nx{i}"));
                ov.lookup(d, &name).unwrap_err()
            })
        });
        c.bench_function(&format!("lookup_cold/{n}_layers"), |b| {
            b.iter_batched(
                || overlay(lowers),
                |ov| {
                    let d = ov.lookup(ROOT_INO, OsStr::new("d")).unwrap().ino;
                    ov.lookup(d, OsStr::new("f999")).unwrap();
                    ov.lookup(d, OsStr::new("missing")).unwrap_err();
                },
                BatchSize::PerIteration,
            )
        });
    }

    let big = tmp.path().join("big");
    std::fs::create_dir_all(big.join("dir")).unwrap();
    for i in 0..100_000 {
        std::fs::File::create(big.join(format!("dir/entry{i:06}"))).unwrap();
    }
    let upper_half = tmp.path().join("big-top");
    std::fs::create_dir_all(upper_half.join("dir")).unwrap();
    for i in 0..1000 {
        std::fs::File::create(upper_half.join(format!("dir/top{i:04}"))).unwrap();
    }
    let ov = overlay(&[upper_half, big]);
    let dir = ov.lookup(ROOT_INO, OsStr::new("dir")).unwrap().ino;
    let mut g = c.benchmark_group("readdir");
    g.sample_size(20);
    g.bench_function("merge_100k", |b| {
        b.iter(|| assert_eq!(ov.read_dir(dir).unwrap().len(), 101_002))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
