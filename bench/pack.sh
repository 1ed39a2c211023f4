#!/usr/bin/env bash
# Packing throughput and stored size: des-pack (--compression none, auto
# without dictionaries, auto with dictionaries trained in the run, and auto
# into a store whose dictionaries are already trained: the steady state, as
# a class's dictionary is reused for --dict-max-age, 24h) against
# `tar -cf -`, `tar -cf - | zstd -3 -T0` and tar + fsync of its archive (the
# durability des-pack gives) over the same files, in the same
# run, page cache warm for everyone. Prints a table with ratios to tar.
#
#   bench/pack.sh DIR [OUT_PARENT]        # JOBS=N for des-pack --jobs (default 4, its default)
#   N_BITS=4 bench/pack.sh DIR            # shards sized for the day's volume (default: the
#                                         # store default, 8: 256 shards for one day's files)
#
# OUT_PARENT (default: a temp dir) should be on the disk you care about;
# outputs are deleted after each measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:?usage: bench/pack.sh DIR [OUT_PARENT]}
parent=${2:-$(mktemp -d "${TMPDIR:-/tmp}/des-bench-pack.XXXXXX")}
created_at=2024-05-17T10:00:00Z
jobs=${JOBS:-4} # des-pack's default
nbits=${N_BITS:+--n-bits $N_BITS}

cargo build --release --locked -q -p des-packer
pack=target/release/des-pack

files=$(find "$dir" -type f | wc -l)
bytes=$(find "$dir" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f", s}')
echo "input: $dir: $files files, $bytes bytes; $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB RAM"
# Warm the page cache so every contender reads from memory.
# (Through a pipe: GNU tar skips reading files when its archive is /dev/null.)
tar -cf - "$dir" 2>/dev/null | cat >/dev/null

# name, command (reads $dir, writes under $out); prints "seconds peak_kb out_bytes"
measure() {
    local out=$parent/out
    rm -rf "$out"
    mkdir -p "$out"
    sync
    /usr/bin/time -o "$parent/time" -f '%e %M' bash -c "$1" >/dev/null 2>"$parent/stderr" || {
        echo "failed: $1" >&2
        cat "$parent/stderr" >&2
        return 1
    }
    sync
    echo "$(tail -1 "$parent/time") $(du -sb "$out" | cut -f1)"
    rm -rf "$out"
}

declare -A result
run() {
    local name=$1 cmd=$2
    result[$name]=$(measure "$cmd")
}

export dir parent pack created_at jobs nbits
run tar "tar -cf \$parent/out/x.tar \"\$dir\""
run tar+zstd "tar -cf - \"\$dir\" | zstd -3 -T0 -q -o \$parent/out/x.tar.zst"
# des-pack fsyncs every shard before it reports success; this is tar with the same promise.
run tar+fsync "tar -cf \$parent/out/x.tar \"\$dir\" && sync \$parent/out/x.tar"
run des-pack-none "\$pack --dir \"\$dir\" --created-at \$created_at --out \$parent/out/store --compression none --jobs \$jobs \$nbits -q"
run des-pack-auto "\$pack --dir \"\$dir\" --created-at \$created_at --out \$parent/out/store --compression auto --dict off --jobs \$jobs \$nbits -q"
run des-pack-dict "\$pack --dir \"\$dir\" --created-at \$created_at --out \$parent/out/store --compression auto --dict auto --jobs \$jobs \$nbits -q"
# Steady state: the same files as the next day's, into a store packed (and
# its dictionaries trained) before the clock starts; the first day's shards
# are removed inside the timed command so only the new day is counted.
rm -rf "$parent/trained"
# shellcheck disable=SC2086 # $nbits is empty or two words
$pack --dir "$dir" --created-at $created_at --out "$parent/trained" --compression auto --dict auto --jobs "$jobs" $nbits -q >/dev/null
run des-pack-reuse "mv \$parent/trained \$parent/out/store && \$pack --dir \"\$dir\" --created-at 2024-05-18T10:00:00Z --out \$parent/out/store --compression auto --dict auto --jobs \$jobs \$nbits -q && rm -rf \$parent/out/store/20240517"

read -r tar_s _ _ <<<"${result[tar]}"
read -r zst_s _ zst_out <<<"${result[tar+zstd]}"
printf '%-15s %9s %10s %9s %11s %13s %8s %12s %10s %12s\n' tool seconds files/s MB/s peak_RSS_MB out_bytes ratio vs_tar_speed size/zstd speed/zstd
for name in tar tar+zstd tar+fsync des-pack-none des-pack-auto des-pack-dict des-pack-reuse; do
    read -r s kb out <<<"${result[$name]}"
    awk -v n="$name" -v s="$s" -v kb="$kb" -v out="$out" -v f="$files" -v b="$bytes" -v t="$tar_s" \
        -v zs="$zst_s" -v zo="$zst_out" 'BEGIN {
        printf "%-15s %9.2f %10.0f %9.1f %11.1f %13.0f %8.3f %12.2f %10.2f %12.2f\n", n, s, f/s, b/s/1e6, kb/1024, out, out/b, t/s, out/zo, zs/s
    }'
done
rm -rf "$parent"
