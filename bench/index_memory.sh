#!/usr/bin/env bash
# Index memory: pack DIR into a local store, start des-retriever, request
# enough random files to load every shard's index, then report the cache's
# bytes per entry and the retriever's RSS. The hot payload cache is off:
# it would hold up to 128 MiB of the files read, which is not index memory.
#
#   bench/index_memory.sh DIR [N_BITS] [REQUESTS]
#   DES_RETRIEVER=/path/to/des-retriever bench/index_memory.sh DIR   # a prebuilt retriever
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

dir=${1:?usage: bench/index_memory.sh DIR [N_BITS] [REQUESTS]}
n_bits=${2:-8}
requests=${3:-20000}
at=2024-05-17T10:00:00Z
work=$(mktemp -d "${TMPDIR:-/tmp}/des-bench-index.XXXXXX")
port=${PORT:-18181}
pid=
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

build_bins "$PWD"
"$pack_bin" --dir "$dir" --created-at "$at" --out "$work/store" --n-bits "$n_bits" \
    --compression none -q --json >"$work/report.json"
entries=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["files_packed"])' "$work/report.json")
RUST_LOG=warn "$retriever_bin" --store "$work/store" --no-auth --listen "127.0.0.1:$port" \
    --cache-bytes 4294967296 --payload-cache-bytes 0 >"$work/retriever.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
find "$dir" -type f -printf '%P\n' | shuf -n "$requests" --random-source=<(yes) >"$work/uids"
python3 - "$work/uids" "$port" "$at" <<'PY'
import sys, urllib.parse, urllib.request
from concurrent.futures import ThreadPoolExecutor
uids = open(sys.argv[1]).read().split("\n")
def get(u):
    if u:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/files/{urllib.parse.quote(u)}?created_at={sys.argv[3]}").read()
with ThreadPoolExecutor(8) as ex:
    list(ex.map(get, uids))
PY
sleep 1
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
metrics=$(curl -fs "http://127.0.0.1:$port/metrics")
cache_bytes=$(awk '/^des_index_cache_bytes / {print $2}' <<<"$metrics")
misses=$(awk '/^des_index_cache_misses_total / {print $2}' <<<"$metrics")
echo "entries=$entries shards=$((1 << n_bits)) requests=$requests index_loads=$misses"
echo "cache_bytes=$cache_bytes bytes_per_entry=$(awk -v c="$cache_bytes" -v e="$entries" 'BEGIN {printf "%.1f", c/e}')"
echo "retriever_rss_kb before=$rss_before after=$rss_after delta_per_entry_bytes=$(awk -v a="$rss_after" -v b="$rss_before" -v e="$entries" 'BEGIN {printf "%.1f", (a-b)*1024/e}')"
