#!/usr/bin/env bash
# `chown -R` of a 1 GiB image tree (many files), the operation that makes
# rootless users with non-contiguous id maps wait: with and without
# metacopy, on the kernel's overlayfs and on plyfs, fresh upper each time,
# cold caches, implementations rotating. Prints each time and medians.
#
#   benches/metacopy.sh [REPS]     (default 3; needs root)
set -euo pipefail
reps=${1:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "metacopy.sh: must run as root" >&2; exit 1; }
cargo build --release --manifest-path "$here/Cargo.toml" --quiet
plyfs=$here/target/release/plyfs
dir=$(mktemp -d /var/tmp/plyfs-metacopy.XXXXXX)
cleanup() {
  mountpoint -q "$dir/m" && { umount "$dir/m" || umount -l "$dir/m"; }
  rm -rf "$dir"
}
trap cleanup EXIT

# 64 directories of 160 files: 10,240 files of 100 KiB, 1 GiB in all.
for d in $(seq 1 64); do
  mkdir -p "$dir/l/d$d"
  for f in $(seq 1 160); do
    head -c 102400 /dev/urandom >"$dir/l/d$d/f$f"
  done
done

impls=(kovl kovl-metacopy plyfs plyfs-metacopy)
once() {
  rm -rf "$dir/u" "$dir/w"
  mkdir -p "$dir/u" "$dir/w" "$dir/m"
  local o="lowerdir=$dir/l,upperdir=$dir/u,workdir=$dir/w"
  case $1 in
    kovl) mount -t overlay overlay -o "$o,redirect_dir=on,index=on" "$dir/m" ;;
    kovl-metacopy) mount -t overlay overlay -o "$o,metacopy=on,redirect_dir=on,index=on" "$dir/m" ;;
    plyfs) "$plyfs" -o "$o" "$dir/m" ;;
    plyfs-metacopy) "$plyfs" -o "$o,metacopy=on" "$dir/m" ;;
  esac
  sync
  echo 3 >/proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  chown -R 1000:1000 "$dir/m"
  sync
  t1=$(date +%s.%N)
  umount "$dir/m"
  echo "$t1 - $t0" | bc
}

declare -A times
for r in $(seq 1 "$reps"); do
  # Rotate the order every repetition.
  n=${#impls[@]}
  for i in $(seq 0 $((n - 1))); do
    impl=${impls[$(((i + r) % n))]}
    t=$(once "$impl")
    times[$impl]+="$t "
    printf '%-16s rep %d: %6.2f s\n' "$impl" "$r" "$t"
  done
done
echo "medians (s):"
for impl in "${impls[@]}"; do
  # shellcheck disable=SC2086
  med=$(printf '%s\n' ${times[$impl]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '  %-16s %6.2f\n' "$impl" "$med"
done
