#!/usr/bin/env bash
# Memory per cached inode: mounts plyfs over a layer of N files, has the
# kernel look every one up (find -printf %s), and reports the daemon's
# resident memory per inode; then drops the kernel's caches, which makes
# it forget the inodes, and reports what is left; then caches them again.
#
#   benches/memory.sh [N]       (default 100000; needs root)
set -euo pipefail
n=${1:-100000}
here=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --manifest-path "$here/Cargo.toml" --quiet
dir=$(mktemp -d /var/tmp/plyfs-mem.XXXXXX)
cleanup() { mountpoint -q "$dir/mnt" && umount "$dir/mnt"; rm -rf "$dir"; }
trap cleanup EXIT
mkdir -p "$dir"/{lower,upper,work,mnt}
perl -e '($d,$n)=@ARGV; for $s (0..99) { mkdir "$d/d$s"; for $f (0..$n/100-1) { open(F,">","$d/d$s/f$f") or die; close F } }' "$dir/lower" "$n"
RUST_LOG=${RUST_LOG:-warn} "$here/target/release/plyfs" -o "lowerdir=$dir/lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/mnt"
pid=$(pgrep -n -f "plyfs -o lowerdir=$dir/lower")
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
before=$(rss)
find "$dir/mnt" -printf '%s\n' >/dev/null
after=$(rss)
sync; echo 2 >/proc/sys/vm/drop_caches; sleep 1
dropped=$(rss)
find "$dir/mnt" -printf '%s\n' >/dev/null
again=$(rss)
echo "inodes looked up: $n"
echo "daemon RSS: ${before} KiB at mount, ${after} KiB with all cached, ${dropped} KiB after the kernel forgot them, ${again} KiB with all cached again"
echo "bytes per cached inode: $(( (after - before) * 1024 / n ))"
