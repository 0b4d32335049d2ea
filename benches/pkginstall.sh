#!/usr/bin/env bash
# A package upgrade as dpkg and rpm do it: for each of 5,000 files in 200
# directories (all present in a lower layer, as the old version), write
# NAME.dpkg-new, fsync it, rename it over NAME. The kernel's overlayfs,
# fuse-overlayfs 1.x and 2.0, and plyfs, in both data paths (FUSE
# passthrough, and the writeback cache of every rootless mount: `-np`),
# same layers, a fresh upper per run, implementations in rotating order.
#
#   benches/pkginstall.sh [REPS] [IMPL ...]
#     IMPLs: kovl fovl fovl2 fovl2-np plyfs plyfs-np (default: all)
#
# Needs root. FILES=N changes the file count (default 5000), SIZE the file
# size in bytes (default 16384). fuse-overlayfs 2.0 is looked for in
# $PEERS/bin (default /var/tmp/peers).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "pkginstall.sh: must run as root" >&2; exit 1; }
reps=${1:-3}
shift || true
impls=("$@")
((${#impls[@]})) || impls=(kovl fovl fovl2 fovl2-np plyfs plyfs-np)
files=${FILES:-5000}
size=${SIZE:-16384}
peers=${PEERS:-/var/tmp/peers}
plyfs=$here/target/release/plyfs
cargo build --release --manifest-path "$here/Cargo.toml" --quiet

dir=$(mktemp -d /var/tmp/plyfs-pkg.XXXXXX)
cleanup() {
  mountpoint -q "$dir/mnt" && { umount "$dir/mnt" || umount -l "$dir/mnt"; }
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir"/{lower,mnt}
python3 - "$dir/lower" "$files" "$size" <<'EOF'
import os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, "usr/lib/pkg%03d" % (i % 200))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "file%05d.so" % i), "wb") as f:
        f.write(b"o" * size)
EOF

mount_impl() {
  local o="lowerdir=$dir/lower,upperdir=$dir/upper,workdir=$dir/work"
  case $1 in
    kovl) mount -t overlay overlay -o "$o" "$dir/mnt" ;;
    fovl) fuse-overlayfs -o "$o" "$dir/mnt" ;;
    fovl2) "$peers/bin/fuse-overlayfs" -o "$o" "$dir/mnt" ;;
    fovl2-np) FUSE_OVERLAYFS_NO_PASSTHROUGH=1 "$peers/bin/fuse-overlayfs" -o "$o" "$dir/mnt" ;;
    plyfs) "$plyfs" -o "$o" "$dir/mnt" ;;
    plyfs-np) "$plyfs" -o "$o,passthrough=0" "$dir/mnt" ;;
    *) echo "pkginstall.sh: unknown implementation $1" >&2; exit 1 ;;
  esac
  for _ in $(seq 200); do mountpoint -q "$dir/mnt" && return; sleep 0.05; done
  echo "pkginstall.sh: $1 did not mount" >&2
  exit 1
}

upgrade() {
  python3 - "$dir/mnt" "$files" "$size" <<'EOF'
import os, sys, time
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = b"n" * size
t0 = time.monotonic()
for i in range(n):
    final = os.path.join(root, "usr/lib/pkg%03d" % (i % 200), "file%05d.so" % i)
    tmp = final + ".dpkg-new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, final)
print("%.3f" % (time.monotonic() - t0))
EOF
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A times
for rep in $(seq "$reps"); do
  # Rotate the order each repetition, as the shared harness does.
  order=("${impls[@]:$(( (rep - 1) % ${#impls[@]} ))}" "${impls[@]:0:$(( (rep - 1) % ${#impls[@]} ))}")
  for impl in "${order[@]}"; do
    rm -rf "$dir/upper" "$dir/work"; mkdir -p "$dir/upper" "$dir/work"
    sync; echo 3 >/proc/sys/vm/drop_caches
    mount_impl "$impl"
    t=$(upgrade)
    # Every file must now hold the new version.
    bad=$( (grep -rl --include='*.so' o "$dir/mnt/usr/lib" || true) | wc -l)
    umount "$dir/mnt"
    [[ $bad == 0 ]] || { echo "pkginstall.sh: $impl left $bad old files" >&2; exit 1; }
    times[$impl]+="$t "
    echo "rep $rep $impl $t s"
  done
done
printf '\n%-9s %8s %10s\n' impl median "÷ kovl"
k=$(printf '%s\n' ${times[kovl]:-} | median)
for impl in "${impls[@]}"; do
  m=$(printf '%s\n' ${times[$impl]} | median)
  r=$([[ -n $k ]] && awk -v a="$m" -v b="$k" 'BEGIN {printf "%.2f×", a / b}' || echo -)
  printf '%-9s %8s %10s\n' "$impl" "$m" "$r"
done
echo "($files files of $size bytes, temp + write + fsync + rename each; medians of $reps)"
