#!/usr/bin/env bash
# GET CPU with shared dictionaries: the same files packed twice (--dict auto
# and --dict off), each store served by a fresh des-retriever pinned to one
# core, wrk pinned to another, payload cache off (every GET reads and decodes
# its entry), index cache warm. Prints the retriever's CPU time per request
# for both and their ratio, and the stored sizes.
#
#   bench/dict_get_cpu.sh DIR [N]      # N files of DIR (default 20000), e.g. the Rust docs
#   ROUNDS=3 DURATION=10 CONNECTIONS=16 bench/dict_get_cpu.sh DIR
#
# Any non-2xx answer fails the run, and so does a byte mismatch on 200
# sampled files (fetched with curl and compared with the originals).
set -euo pipefail

dir=${1:?usage: bench/dict_get_cpu.sh DIR [N]}
n=${2:-20000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
CREATED_AT=2024-05-17T10:00:00Z

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
for tool in wrk curl taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk curl util-linux)" >&2; exit 1; }
done
(($(nproc) >= 2)) || { echo "needs 2 cores (server and load generator pinned apart)" >&2; exit 1; }
build_bins "$root"
work=$(mktemp -d /tmp/des-bench-dict.XXXXXX)
server=
trap '[[ -n $server ]] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT

# The first N files (sorted, so both runs and reruns see the same ones), copied.
# (sed, not head: head would stop sort early, and pipefail end the script)
(cd "$dir" && find . -type f -size -256k | sort | sed -n "1,${n}p" | sed 's|^\./||') >"$work/list"
mkdir -p "$work/src"
(cd "$dir" && tr '\n' '\0' <"$work/list" | xargs -0 cp --parents -t "$work/src")
bytes=$(du -sb "$work/src" | cut -f1)
echo "input: $(wc -l <"$work/list") files of $dir, $bytes bytes"
sed "s|^|/files/|; s|\$|?created_at=$CREATED_AT|" "$work/list" >"$work/paths"

for mode in auto off; do
    "$pack_bin" --dir "$work/src" --created-at "$CREATED_AT" --store "$work/$mode" --dict "$mode" -q
    echo "stored ($mode): $(du -sb "$work/$mode" | cut -f1) bytes, ratio $(awk -v a="$(du -sb "$work/$mode" | cut -f1)" -v b="$bytes" 'BEGIN {printf "%.3f", a/b}')"
done

# serve MODE ROUND: prints "cpu_ticks_per_1000_requests rps"
serve() {
    local mode=$1 port
    port=$(free_port)
    taskset -c 1 "$retriever_bin" --store "$work/$mode" --no-auth --listen "127.0.0.1:$port" --workers 1 \
        --payload-cache-bytes 0 --cache-bytes 1G >"$work/r.log" 2>&1 &
    server=$!
    wait_port "$port"
    # Sampled bytes must match; this also warms the index cache.
    shuf -n 200 --random-source=<(yes) "$work/list" | while read -r f; do
        curl -sf -o "$work/got" "http://127.0.0.1:$port/files/$f?created_at=$CREATED_AT" || { echo "GET $f failed" >&2; exit 1; }
        cmp -s "$work/got" "$work/src/$f" || { echo "byte mismatch: $f" >&2; exit 1; }
    done
    PATHS_FILE=$work/paths taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d2s -s "$root/bench/random_paths.lua" \
        "http://127.0.0.1:$port" >/dev/null # warm every shard's index
    local t0 t1 out
    t0=$(cpu_ticks "$server")
    out=$(PATHS_FILE=$work/paths taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
        -s "$root/bench/random_paths.lua" "http://127.0.0.1:$port")
    t1=$(cpu_ticks "$server")
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    local line rps errors requests
    line=$(grep '^RESULT' <<<"$out")
    rps=$(sed 's/.*rps=\([0-9.]*\).*/\1/' <<<"$line")
    errors=$(sed 's/.*errors=\([0-9]*\).*/\1/' <<<"$line")
    requests=$(grep -o '[0-9]* requests in' <<<"$out" | cut -d' ' -f1)
    ((errors == 0)) || { echo "$mode: $errors non-2xx or failed requests" >&2; exit 1; }
    awk -v t=$((t1 - t0)) -v r="$requests" -v rps="$rps" 'BEGIN {printf "%.4f %s\n", t*1000/r, rps}'
}

declare -a ratios
for round in $(seq 1 "$ROUNDS"); do
    read -r dict_cpu dict_rps < <(serve auto)
    read -r plain_cpu plain_rps < <(serve off)
    ratio=$(awk -v a="$dict_cpu" -v b="$plain_cpu" 'BEGIN {printf "%.3f", a/b}')
    ratios+=("$ratio")
    echo "RESULT round=$round dict_ticks_per_1k=$dict_cpu dict_rps=$dict_rps plain_ticks_per_1k=$plain_cpu plain_rps=$plain_rps cpu_ratio=$ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median GET CPU ratio (dict/plain): %s\n", a[int((NR+1)/2)]}'
