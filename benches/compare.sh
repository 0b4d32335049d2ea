#!/usr/bin/env bash
# Runs plyfs against the kernel's overlayfs and fuse-overlayfs (the Debian
# 1.x build and the 2.0 Rust rewrite) on the same layers in the same run,
# with the shared comparison harness, and prints medians and ratios.
#
#   benches/compare.sh            # full run (~1.5 h on 2 cores)
#   QUICK=1 benches/compare.sh    # smoke test (~5 min)
#
# Needs root. BENCH_SH points at the harness (default: ../shared/bench/bench.sh
# next to this checkout). Any environment of the harness passes through
# (REPS, WORKLOADS, BENCH_DIR, OUT).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BENCH_SH=${BENCH_SH:-$here/../shared/bench/bench.sh}
[[ -x $BENCH_SH ]] || { echo "compare.sh: no harness at $BENCH_SH (set BENCH_SH)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "compare.sh: must run as root" >&2; exit 1; }

need=()
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v fio >/dev/null || need+=(fio)
if ((${#need[@]})); then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
peers=${PEERS:-/var/tmp/peers}
if [[ ! -x $peers/bin/fuse-overlayfs ]]; then
  cargo install --quiet --root "$peers" fuse-overlayfs
fi

cargo build --release --manifest-path "$here/Cargo.toml" --quiet
plyfs=$here/target/release/plyfs

# Both data paths of each FUSE implementation: passthrough (root), and
# file data through the daemon (-np: every rootless mount; plyfs then uses
# the writeback cache).
o="lowerdir={lowers},upperdir={upper},workdir={work}"
export MOUNT_plyfs="$plyfs -o $o {mnt}"
export MOUNT_plyfsnp="$plyfs -o $o,passthrough=0 {mnt}"
export MOUNT_fovl2="$peers/bin/fuse-overlayfs -o $o {mnt}"
export MOUNT_fovl2np="FUSE_OVERLAYFS_NO_PASSTHROUGH=1 $peers/bin/fuse-overlayfs -o $o {mnt}"
exec "$BENCH_SH" kovl fovl gen:fovl2 gen:fovl2np gen:plyfs gen:plyfsnp
