#!/usr/bin/env bash
# `podman commit` of a container with N changed files (default 20,000 in
# 200 directories), with each union as containers-storage's mount_program:
# plyfs, fuse-overlayfs 1.x and 2.0; and the kernel's overlay driver (no
# mount_program) as the anchor. With a mount_program, containers-storage
# computes the diff by mounting the layer and its parent and walking both
# (lstat and listxattr per file): that walk is what this measures.
#
#   benches/podman-commit.sh [RUNS] [PROGRAM ...]
#     PROGRAMs: kernel plyfs fovl fovl2 (default: all)
#
# Needs root and podman. Each program gets a private podman storage; the
# page cache is dropped before each commit; programs alternate per run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "podman-commit.sh: must run as root" >&2; exit 1; }
command -v podman >/dev/null || { echo "podman-commit.sh: podman is not installed" >&2; exit 1; }
runs=${1:-3}
shift || true
progs=("$@")
((${#progs[@]})) || progs=(kernel plyfs fovl fovl2)
N=${N:-20000}
peers=${PEERS:-/var/tmp/peers}
cargo build --release --manifest-path "$here/Cargo.toml" --quiet
DIR=$(mktemp -d /var/tmp/plyfs-podman-commit.XXXXXX)

program_path() {
  case $1 in
    kernel) echo "" ;;
    plyfs) echo "$here/target/release/plyfs" ;;
    fovl) command -v fuse-overlayfs ;;
    fovl2) echo "$peers/bin/fuse-overlayfs" ;;
    *) echo "podman-commit.sh: unknown program $1" >&2; exit 1 ;;
  esac
}

pod() { # PROGRAM podman-args...
  local p=$1; shift
  CONTAINERS_STORAGE_CONF="$DIR/$p/storage.conf" podman --events-backend none --cgroup-manager cgroupfs "$@"
}

cleanup() {
  set +e
  for p in "${progs[@]}"; do
    [[ -f $DIR/$p/storage.conf ]] || continue
    pod "$p" unmount -a -f >/dev/null 2>&1
    pod "$p" rm -a -f >/dev/null 2>&1
    pod "$p" rmi -a -f >/dev/null 2>&1
  done
  umount_below "$DIR"
  rm -rf "$DIR"
}
trap cleanup EXIT

make_base_tar "$DIR" "$N"
change='find data -type f -print0 | xargs -0 -n 1000 sh -c '"'"'for f; do printf x >> "$f"; done'"'"' sh'

declare -A ctr
for p in "${progs[@]}"; do
  path=$(program_path "$p")
  [[ -z $path || -x $path ]] || { echo "podman-commit.sh: $p not found at $path" >&2; exit 1; }
  mkdir -p "$DIR/$p"
  line=""
  [[ -n $path ]] && line="mount_program = \"$path\""
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n\n[storage.options.overlay]\n%s\nmountopt = "nodev"\n' \
    "$DIR/$p/graph" "$DIR/$p/run" "$line" >"$DIR/$p/storage.conf"
  pod "$p" import -q "$DIR/base.tar" localhost/bench/base:1 >/dev/null
  ctr[$p]=$(pod "$p" create localhost/bench/base:1 /bin/true)
  mnt=$(pod "$p" mount "${ctr[$p]}")
  (cd "$mnt" && sh -c "$change")
  pod "$p" unmount "${ctr[$p]}" >/dev/null
done

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A times
for i in $(seq 1 "$runs"); do
  k=$(( (i - 1) % ${#progs[@]} ))
  for p in "${progs[@]:$k}" "${progs[@]:0:$k}"; do
    sync; echo 3 >/proc/sys/vm/drop_caches
    t=$(secs pod "$p" commit -q "${ctr[$p]}" "localhost/bench/new:$i")
    times[$p]+="$t "
    echo "run $i $p $t s"
  done
done
echo
printf '%-8s %8s\n' program median
for p in "${progs[@]}"; do
  printf '%-8s %8s\n' "$p" "$(printf '%s\n' ${times[$p]} | median)"
done
echo "($N changed files; podman commit, page cache dropped before each; medians of $runs)"
