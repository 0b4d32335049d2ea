#!/usr/bin/env bash
# Daemon memory per cached inode, plyfs against fuse-overlayfs (the Debian
# 1.x build and the 2.0 Rust rewrite) on the same layers in the same run.
#
# The stack mirrors the comparison harness's: a 100,000-entry directory, a
# copy of /usr/lib and one of /usr/share (names and attributes only: file
# sizes do not matter here). Each implementation mounts it, `find -printf
# %s` has the kernel look up and stat every entry, and the daemon's RSS
# growth is divided by the number of entries; then the kernel's caches are
# dropped (it forgets the inodes) and the RSS left is reported.
#
#   benches/memory.sh [IMPL ...]     IMPLs: plyfs fovl fovl2 (default: all)
#
# Needs root. REPS=N runs each N times (default 3) and reports medians.
# fuse-overlayfs 2.0 is looked for in $PEERS/bin (default /var/tmp/peers).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "memory.sh: must run as root" >&2; exit 1; }
reps=${REPS:-3}
peers=${PEERS:-/var/tmp/peers}
impls=("$@")
((${#impls[@]})) || impls=(plyfs fovl fovl2)

cargo build --release --manifest-path "$here/Cargo.toml" --quiet
layers=${MEM_LAYERS:-/var/tmp/plyfs-memlayers}
if [[ ! -e $layers/.done ]]; then
  rm -rf "$layers"
  mkdir -p "$layers"/{l0/big,l1,l2}
  perl -e '($d)=@ARGV; for $f (0..99999) { open(F,">","$d/f$f") or die; close F }' "$layers/l0/big"
  cp -r --attributes-only --no-preserve=all /usr/lib/. "$layers/l1/" 2>/dev/null || true
  cp -r --attributes-only --no-preserve=all /usr/share/. "$layers/l2/" 2>/dev/null || true
  touch "$layers/.done"
fi
lowers="$layers/l0:$layers/l1:$layers/l2"

scratch=$(mktemp -d /var/tmp/plyfs-mem.XXXXXX)
cleanup() {
  mountpoint -q "$scratch/mnt" && { umount "$scratch/mnt" || umount -l "$scratch/mnt"; }
  rm -rf "$scratch"
}
trap cleanup EXIT

mount_impl() {
  local o="lowerdir=$lowers,upperdir=$scratch/upper,workdir=$scratch/work"
  case $1 in
    plyfs) RUST_LOG=warn "$here/target/release/plyfs" -o "$o" "$scratch/mnt" ;;
    fovl) fuse-overlayfs -o "$o" "$scratch/mnt" ;;
    fovl2) "$peers/bin/fuse-overlayfs" -o "$o" "$scratch/mnt" ;;
  esac
  for _ in $(seq 200); do mountpoint -q "$scratch/mnt" && break; sleep 0.05; done
}

daemon_pid() { pgrep -n -f -- "-o lowerdir=$lowers,upperdir=$scratch/upper"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-7s %9s %14s %16s\n' impl entries "B/entry cached" "KiB after forget"
for impl in "${impls[@]}"; do
  case $impl in
    fovl) command -v fuse-overlayfs >/dev/null || { echo "memory.sh: fuse-overlayfs not installed" >&2; exit 1; } ;;
    fovl2) [[ -x $peers/bin/fuse-overlayfs ]] || { echo "memory.sh: no $peers/bin/fuse-overlayfs (cargo install --root $peers fuse-overlayfs)" >&2; exit 1; } ;;
    plyfs) ;;
    *) echo "memory.sh: unknown implementation $impl" >&2; exit 1 ;;
  esac
  per=() left=()
  for _ in $(seq "$reps"); do
    rm -rf "$scratch"/{upper,work}; mkdir -p "$scratch"/{upper,work,mnt}
    sync; echo 3 >/proc/sys/vm/drop_caches
    mount_impl "$impl"
    pid=$(daemon_pid)
    before=$(rss "$pid")
    n=$(find "$scratch/mnt" -printf '%s\n' | wc -l)
    after=$(rss "$pid")
    sync; echo 2 >/proc/sys/vm/drop_caches; sleep 1
    left+=("$(rss "$pid")")
    per+=("$(( (after - before) * 1024 / n ))")
    umount "$scratch/mnt"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  done
  printf '%-7s %9s %14s %16s\n' "$impl" "$n" \
    "$(printf '%s\n' "${per[@]}" | median)" "$(printf '%s\n' "${left[@]}" | median)"
done
