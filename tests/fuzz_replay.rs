//! The fuzz targets (`fuzz/`, run with cargo-fuzz on nightly by
//! `fuzz/run.sh`) on stable, as part of the suite: every input of the
//! committed corpus (`fuzz/corpus/TARGET/`, seeds and what the fuzzer
//! kept) replayed, then a bounded number of random inputs per target
//! (proptest). No input may panic; the targets that build layers check
//! that nothing outside them changed.

#[allow(dead_code)]
#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use proptest::prelude::*;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Targets that make layers, unpack tars or mount nothing but need root
/// for `trusted.*` attributes and device nodes.
fn needs_root(target: &str) -> bool {
    matches!(target, "union" | "check" | "image_layer" | "image_archive")
}

fn is_root() -> bool {
    // SAFETY-free: /proc/self's owner is the effective user.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

#[test]
fn corpus_replays_without_a_panic() {
    // PLYFS_FUZZ_WRITE_SEEDS=1 (fuzz/run.sh) refreshes the seeds first.
    if std::env::var_os("PLYFS_FUZZ_WRITE_SEEDS").is_some() {
        targets::write_seeds(&corpus_dir()).unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    // PLYFS_FUZZ_INPUT=TARGET:FILE replays one input (an artifact of
    // fuzz/run.sh) under the debugger-friendly test build.
    if let Ok(one) = std::env::var("PLYFS_FUZZ_INPUT") {
        let (target, file) = one.split_once(':').expect("PLYFS_FUZZ_INPUT=TARGET:FILE");
        let data = std::fs::read(file).unwrap();
        targets::run(target, &scratch.path().join(target), &data);
        return;
    }
    let mut ran = 0;
    for target in targets::TARGETS {
        if needs_root(target) && !is_root() {
            eprintln!("SKIPPED: {target} needs root");
            continue;
        }
        let dir = corpus_dir().join(target);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no corpus for {target}");
        let started = std::time::Instant::now();
        let n = inputs.len();
        for p in inputs {
            let data = std::fs::read(&p).unwrap();
            let s = scratch.path().join(target);
            targets::run(target, &s, &data);
            ran += 1;
        }
        eprintln!("{target}: {n} inputs in {:.1?}", started.elapsed());
    }
    eprintln!("{ran} corpus inputs replayed");
}

/// The seeds the corpus was started from are still there (a target that
/// lost its seeds would fuzz from nothing).
#[test]
fn seeds_are_in_the_corpus() {
    for (target, data) in targets::seeds() {
        let dir = corpus_dir().join(target);
        let found = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read(e.path()).is_ok_and(|d| d == data));
        assert!(found, "a seed of {target} is not in {}", dir.display());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_pure_inputs(data in proptest::collection::vec(any::<u8>(), 0..96)) {
        for target in ["options", "marker_values", "markers", "lower_index"] {
            targets::run(target, Path::new("/nonexistent"), &data);
        }
    }

    #[test]
    fn random_marker_text(s in "[LU/.a-z0-9:+\\-\u{0}]{0,24}") {
        targets::marker_values(s.as_bytes());
        targets::options(s.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_layers(data in proptest::collection::vec(any::<u8>(), 0..80)) {
        if is_root() {
            let scratch = tempfile::tempdir().unwrap();
            for target in ["union", "check", "image_layer", "image_archive"] {
                targets::run(target, &scratch.path().join(target), &data);
            }
        }
    }
}

/// The archive seed imports (so the fuzzer starts from inputs that reach
/// the layer unpacking, past every digest check).
#[test]
fn archive_seed_imports() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let seed = targets::seeds()
        .into_iter()
        .find(|(t, _)| *t == "image_archive")
        .unwrap()
        .1;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    std::fs::write(
        &archive,
        targets::docker_archive(&seed[1..], &dir.path().join("canary")),
    )
    .unwrap();
    let store = plyfs_image::Store::open(&dir.path().join("store")).unwrap();
    let imported = plyfs_image::import::import(
        &store,
        &archive,
        plyfs_image::WhiteoutFormat::Oci,
        &plyfs_image::Quiet,
    )
    .unwrap();
    assert_eq!(imported.images.len(), 1);
    assert_eq!(imported.layers_unpacked, 1);
}
