//! Shared machinery of the end-to-end tests: building layers, mounting
//! plyfs and the kernel's overlayfs (the oracle) with guards that always
//! unmount, and snapshots of merged trees to compare.
//!
//! Everything is re-exported here so test files need only `use common::*`.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

mod cli;
mod mounts;
mod privileges;
mod scratch;
mod tree;

pub mod bigfiles;
pub mod images;
pub mod lanes;
pub mod loadwork;
pub mod oci;
pub mod ops;
pub mod podman;
pub mod random;
pub mod registry;
pub mod token;
pub mod users;

// One use, so one allow covers what a given binary leaves unused.
#[allow(unused_imports)]
pub use {
    cli::{PLYFS, lowerdir, plyfs},
    mounts::{KernelMount, PlyfsMount, TmpfsMount, is_mounted},
    privileges::require_mount_privileges,
    scratch::{LayerBuilder, Scratch, append, mknod, oci_to_kernel_format},
    tree::{Compare, Obj, Tree, assert_same_trees, diff_trees, kind_of, link_groups, snapshot},
};
