# Shared by the commit benchmarks (sourced, not run).

# A base image's rootfs tar at $1/base.tar: $2 files of 1 kB in 200
# directories under data/.
make_base_tar() {
  local dir=$1 n=$2
  mkdir -p "$dir/rootfs/data"
  for d in $(seq 1 200); do
    mkdir -p "$dir/rootfs/data/d$d"
    for f in $(seq 1 $((n / 200))); do head -c 1000 /dev/zero > "$dir/rootfs/data/d$d/f$f"; done
  done
  tar -C "$dir/rootfs" -cf "$dir/base.tar" .
}

# Lazily unmounts everything mounted below $1, deepest first.
umount_below() {
  awk -v d="$1" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
}
