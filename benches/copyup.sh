#!/usr/bin/env bash
# Cold copy-up of a 1 GiB lower file (append one byte), alone, on a fresh
# mount each time, implementations alternating: the kernel's overlayfs,
# plyfs, plyfs with `volatile` (no fsync of the copy), fuse-overlayfs 1.x
# and 2.0 (where installed; see compare.sh). Prints each time and medians.
#
#   benches/copyup.sh [REPS]     (default 4; needs root)
set -euo pipefail
reps=${1:-4}
here=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "copyup.sh: must run as root" >&2; exit 1; }
cargo build --release --manifest-path "$here/Cargo.toml" --quiet
plyfs=$here/target/release/plyfs
fovl2=${PEERS:-/var/tmp/peers}/bin/fuse-overlayfs
dir=$(mktemp -d /var/tmp/plyfs-copyup.XXXXXX)
cleanup() {
  mountpoint -q "$dir/m" && { umount "$dir/m" || umount -l "$dir/m"; }
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/l"
head -c 1G /dev/urandom >"$dir/l/big"

impls=(kovl plyfs plyfs-volatile)
command -v fuse-overlayfs >/dev/null && impls+=(fovl)
[[ -x $fovl2 ]] && impls+=(fovl2)

once() {
  rm -rf "$dir/u" "$dir/w"
  mkdir -p "$dir/u" "$dir/w" "$dir/m"
  local o="lowerdir=$dir/l,upperdir=$dir/u,workdir=$dir/w"
  case $1 in
    kovl) mount -t overlay overlay -o "$o" "$dir/m" ;;
    plyfs) "$plyfs" -o "$o" "$dir/m" ;;
    plyfs-volatile) "$plyfs" -o "$o,volatile" "$dir/m" ;;
    fovl) fuse-overlayfs -o "$o" "$dir/m" 2>/dev/null ;;
    fovl2) "$fovl2" -o "$o" "$dir/m" 2>/dev/null ;;
  esac
  sync
  echo 3 >/proc/sys/vm/drop_caches
  local s e
  s=$(date +%s.%N)
  printf x >>"$dir/m/big"
  e=$(date +%s.%N)
  umount "$dir/m"
  echo "$e - $s" | bc
}

declare -A times
for ((r = 0; r < reps; r++)); do
  for ((i = 0; i < ${#impls[@]}; i++)); do
    impl=${impls[(i + r) % ${#impls[@]}]}
    t=$(once "$impl")
    times[$impl]+=" $t"
    printf '%-15s %s\n' "$impl" "$t"
  done
done
echo "median seconds:"
for impl in "${impls[@]}"; do
  printf '%-15s %s\n' "$impl" "$(tr ' ' '\n' <<<"${times[$impl]}" | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')"
done
