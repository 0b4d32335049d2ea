//! The bodies of the fuzz targets, in `targets.rs`, which the workspace's
//! stable test `tests/fuzz_replay.rs` includes too: the fuzzer and the
//! replay of the corpus run the very same code.

#[path = "targets.rs"]
pub mod targets;
