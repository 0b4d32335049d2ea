#!/usr/bin/env bash
# benches/uring/run.sh - what FUSE over io_uring is worth here (issue 14).
#
# Usage (as root, from the repository root, after `cargo build --release`):
#   benches/uring/run.sh                     5 repetitions, all variants
#   REPS=3 VARIANTS="classic1 uring" benches/uring/run.sh
#   TMPFS=1 benches/uring/run.sh             layers and backing on a tmpfs:
#                                            no disk, transport and CPU only
#
# The same minimal passthrough server (benches/uring/src: one backing
# directory, *at() calls, long entry/attr timeouts, readdirplus), mounted
# with either transport, against plyfs and the kernel's overlayfs:
#   classic1 / classic2 / classic4   /dev/fuse read+writev loop, 1/2/4 threads
#   uring        FUSE_OVER_IO_URING: one ring per CPU queue, one thread each,
#                pinned to its CPU, 8 entries, DEFER_TASKRUN (libfuse's setup)
#   uring-nopin  the same, threads not pinned
#   plyfs / plyfs1   target/release/plyfs, empty lower, threads default (4) / 1
#   kovl         the kernel's overlayfs, empty lower
# Steps, each on a fresh mount with an empty upper: drop caches, `tar -x` of
# /usr/share/man (23,990 entries, 54 MB), sync + drop caches, a cold and a
# warm `find -printf '%s\n'` of the result, `rm -rf` of it. Variants run in
# a rotating order per repetition so other load hits all of them alike.
# Sets /sys/module/fuse/parameters/enable_uring to Y and restores it at exit.
# Output: $OUT/raw.tsv and $OUT/summary.txt (median seconds, and ratios).
#
# Figures (2026-11-27, this project's 2-vCPU Firecracker VM, kernel 6.18,
# other builds running; REPS=5, medians in seconds; README.md, Performance,
# "FUSE over io_uring" says what they mean):
#   TMPFS=1   classic1 classic2 classic4 uring uring-nopin plyfs plyfs1 kovl
#   untar        1.467    2.107    4.325 1.247       1.366 4.435  1.498 0.373
#   stat_cold    0.192    0.201    0.195 0.170       0.178 0.228  0.256 0.118
#   stat_warm    0.158    0.139    0.160 0.122       0.133 0.065  0.059 0.076
#   rm_rf        0.577    0.838    1.460 0.530       0.667 1.365  0.660 0.218
#   TMPFS=1 again, VARIANTS="classic1 classic2 uring": untar 1.661 3.503
#   1.296, stat_cold 0.187 0.211 0.164, stat_warm 0.132 0.145 0.124, rm_rf
#   0.690 1.109 0.590
#   ext4 (disk shared with other benchmarks; rm_rf swings 2-5x in a variant)
#   untar        1.641    4.434    5.298 1.428       1.703 4.592  2.213 0.420
#   stat_cold    0.269    0.298    0.337 0.355       0.255 0.498  0.327 0.178
#   stat_warm    0.128    0.132    0.123 0.120       0.114 0.076  0.069 0.059
#   rm_rf        4.346    4.323    5.447 2.811       8.076 2.846 20.159 2.360
set -u
export LC_ALL=C

REPS=${REPS:-5}
VARIANTS=${VARIANTS:-"classic1 classic2 classic4 uring uring-nopin plyfs plyfs1 kovl"}
DIR=${BENCH_DIR:-/var/tmp/uringbench}
OUT=${OUT:-$DIR/results-$(date +%Y%m%d-%H%M%S)}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PLYFS=${PLYFS:-$ROOT/target/release/plyfs}
SRV=$ROOT/benches/uring/target/release/fuse-uring-bench
PARAM=/sys/module/fuse/parameters/enable_uring

die() { echo "run.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root"
[[ -w $PARAM ]] || die "this kernel has no FUSE over io_uring ($PARAM)"
cargo build --release --quiet --manifest-path "$ROOT/benches/uring/Cargo.toml" || die "build"
case " $VARIANTS " in *" plyfs"*) [[ -x $PLYFS ]] || die "no $PLYFS: cargo build --release" ;; esac

mkdir -p "$DIR" "$OUT"
TAR=$DIR/man.tar
[[ -s $TAR ]] || tar -C / -cf "$TAR" usr/share/man
ORIG=$(cat "$PARAM")
M=$DIR/mnt
T=$DIR
if [[ ${TMPFS:-0} == 1 ]]; then
  T=$DIR/tmpfs; mkdir -p "$T"
  mountpoint -q "$T" || mount -t tmpfs -o size=2g uringbench "$T" || die "tmpfs"
fi
L=$T/lower U=$T/upper W=$T/work
PID=
cleanup() {
  mountpoint -q "$M" && umount "$M"
  [[ -n $PID ]] && wait "$PID" 2>/dev/null
  [[ $T != "$DIR" ]] && mountpoint -q "$T" && umount "$T"
  echo "$ORIG" >"$PARAM"
}
trap cleanup EXIT
echo Y >"$PARAM"

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

mount_variant() {
  PID=
  case $1 in
    classic1) "$SRV" --mode classic --threads 1 "$U" "$M" 2>>"$OUT/server.log" & PID=$! ;;
    classic2) "$SRV" --mode classic --threads 2 "$U" "$M" 2>>"$OUT/server.log" & PID=$! ;;
    classic4) "$SRV" --mode classic --threads 4 "$U" "$M" 2>>"$OUT/server.log" & PID=$! ;;
    uring) "$SRV" --mode uring "$U" "$M" 2>>"$OUT/server.log" & PID=$! ;;
    uring-nopin) "$SRV" --mode uring --no-pin "$U" "$M" 2>>"$OUT/server.log" & PID=$! ;;
    plyfs) "$PLYFS" -f -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M" 2>>"$OUT/server.log" & PID=$! ;;
    plyfs1) "$PLYFS" -f -o "lowerdir=$L,upperdir=$U,workdir=$W,threads=1" "$M" 2>>"$OUT/server.log" & PID=$! ;;
    kovl) mount -t overlay overlay -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M" ;;
    *) die "unknown variant $1" ;;
  esac
  for _ in $(seq 100); do mountpoint -q "$M" && return 0; sleep 0.1; done
  die "$1 did not mount"
}

umount_variant() {
  umount "$M" || umount -l "$M"
  [[ -n $PID ]] && wait "$PID"
  PID=
}

printf 'rep\tvariant\tstep\tseconds\tcheck\n' >"$OUT/raw.tsv"
step() { # rep variant name command...
  local rep=$1 v=$2 name=$3; shift 3
  local t0 t1 out
  t0=$(now); out=$(bash -c "$*" 2>&1 | tail -1); t1=$(now)
  printf '%s\t%s\t%s\t%.3f\t%s\n' "$rep" "$v" "$name" "$(echo "$t1 - $t0" | bc)" "$out" | tee -a "$OUT/raw.tsv"
}

read -r -a VS <<<"$VARIANTS"
n=${#VS[@]}
for rep in $(seq "$REPS"); do
  for i in $(seq 0 $((n - 1))); do
    v=${VS[$(((i + rep - 1) % n))]}
    rm -rf "$L" "$U" "$W"; mkdir -p "$L" "$U" "$W" "$M"
    mount_variant "$v"
    drop
    step "$rep" "$v" untar "tar -xf $TAR -C $M && echo ok"
    drop
    step "$rep" "$v" stat_cold "find $M/usr -printf '%s\n' | wc -l"
    step "$rep" "$v" stat_warm "find $M/usr -printf '%s\n' | wc -l"
    step "$rep" "$v" rm_rf "rm -rf $M/usr && echo ok"
    umount_variant
  done
done
rm -rf "$L" "$U" "$W"

python3 - "$OUT/raw.tsv" "$VARIANTS" >"$OUT/summary.txt" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
variants = sys.argv[2].split()
t = collections.defaultdict(list)
for rep, v, step, sec, _ in rows:
    t[(step, v)].append(float(sec))
steps = ["untar", "stat_cold", "stat_warm", "rm_rf"]
med = {k: statistics.median(x) for k, x in t.items()}
print("median seconds of %d repetitions" % max(len(x) for x in t.values()))
print("step\t" + "\t".join(variants))
for s in steps:
    print(s + "\t" + "\t".join("%.3f" % med.get((s, v), float("nan")) for v in variants))
for base in ("classic1", "classic4"):
    if base not in variants or "uring" not in variants:
        continue
    print("\n%s / uring (above 1: io_uring is faster)" % base)
    for s in steps:
        print("%s\t%.2fx" % (s, med[(s, base)] / med[(s, "uring")]))
EOF
cat "$OUT/summary.txt"
