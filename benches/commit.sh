#!/usr/bin/env bash
# plyfs commit vs podman commit of the same change: an image of N files
# (default 20,000, in 200 directories), every one of them changed in a
# container, then committed as a new image. podman runs with a private
# storage (the kernel's overlay driver) under DIR; plyfs with a private
# store there. Prints each run and the medians.
#
#   benches/commit.sh [RUNS]     (as root; PLYFS=path/to/plyfs, N=files)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${1:-3}
N=${N:-20000}
PLYFS=${PLYFS:-$(cd "$(dirname "$0")/.." && pwd)/target/release/plyfs}
DIR=$(mktemp -d /var/tmp/plyfs-commit-bench.XXXXXX)
P=(podman --root "$DIR/podman/root" --runroot "$DIR/podman/run" --storage-driver overlay --events-backend none --cgroup-manager cgroupfs)
S=(--store "$DIR/store" --quiet)
cleanup() {
  set +e
  umount "$DIR/mnt" 2>/dev/null
  "${P[@]}" unmount -a -f >/dev/null 2>&1
  "${P[@]}" rm -a -f >/dev/null 2>&1
  "${P[@]}" rmi -a -f >/dev/null 2>&1
  umount_below "$DIR"
  rm -rf "$DIR"
}
trap cleanup EXIT

# The base image: N files of 1 kB.
make_base_tar "$DIR" "$N"
"${P[@]}" import -q "$DIR/base.tar" localhost/bench/base:1 >/dev/null
"${P[@]}" save -q -o "$DIR/base-saved.tar" localhost/bench/base:1
"$PLYFS" image import "${S[@]}" "$DIR/base-saved.tar" >/dev/null 2>&1

# The change: every file gets one more byte.
change='find data -type f -print0 | xargs -0 -n 1000 sh -c '"'"'for f; do printf x >> "$f"; done'"'"' sh'

ctr=$("${P[@]}" create localhost/bench/base:1 /bin/true)
mnt=$("${P[@]}" mount "$ctr")
(cd "$mnt" && sh -c "$change")
"${P[@]}" unmount "$ctr" >/dev/null

mkdir -p "$DIR/mnt"
"$PLYFS" mount "${S[@]}" --image localhost/bench/base:1 --upper "$DIR/upper" "$DIR/mnt"
(cd "$DIR/mnt" && sh -c "$change")
umount "$DIR/mnt"

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > "$DIR/podman.t"; : > "$DIR/plyfs-o.t"; : > "$DIR/plyfs-tag.t"
for i in $(seq 1 "$RUNS"); do
  sync; echo 3 > /proc/sys/vm/drop_caches
  t=$(secs "${P[@]}" commit -q "$ctr" "localhost/bench/new:$i"); echo "$t" >> "$DIR/podman.t"
  sync; echo 3 > /proc/sys/vm/drop_caches
  t=$(secs "$PLYFS" commit "${S[@]}" "$DIR/upper" --image localhost/bench/base:1 -o "$DIR/layer.tar"); echo "$t" >> "$DIR/plyfs-o.t"
  sync; echo 3 > /proc/sys/vm/drop_caches
  t=$(secs "$PLYFS" commit "${S[@]}" "$DIR/upper" --image localhost/bench/base:1 --tag "localhost/bench/new:$i"); echo "$t" >> "$DIR/plyfs-tag.t"
  echo "run $i: podman commit $(tail -1 "$DIR/podman.t") s, plyfs commit -o $(tail -1 "$DIR/plyfs-o.t") s, plyfs commit --tag $(tail -1 "$DIR/plyfs-tag.t") s"
done
echo "files changed: $N (page cache dropped before each commit)"
echo "median podman commit:        $(median < "$DIR/podman.t") s"
echo "median plyfs commit -o:      $(median < "$DIR/plyfs-o.t") s (the layer tar only)"
echo "median plyfs commit --tag:   $(median < "$DIR/plyfs-tag.t") s (layer stored and unpacked, new image, as podman commit)"
