#!/usr/bin/env bash
# Cold reads at archive scale: storage requests, bytes and latency per GET
# from shards of 1,000 / 10,000 / 100,000 entries on Garage, every request to
# Garage crossing des-latency-proxy (DELAY each way, 10 ms by default), next
# to a direct GET of the same file stored as a loose object through the same
# kind of proxy (Garage's web endpoint).
#
#   bench/cold_scale.sh                          # defaults below (~10 min)
#   SIZES="1000 10000" DELAY=10ms RATE=100MB/s bench/cold_scale.sh
#   DES_RETRIEVER=/path/to/des-retriever bench/cold_scale.sh   # a prebuilt build (A/B)
#
# Per shard size, four ways to GET the same SAMPLE files:
#   cold       every cache off (--cache-bytes 1 --page-cache-bytes 1): suffix
#              read, index page (paged shards), payload
#   directory  directory cached, pages not (--page-cache-bytes 1)
#   warm       directory and pages cached (after one pass over the sample)
#   direct     the file as a loose object, one GET
# The payload cache is off in all three retriever modes. Requests and bytes
# per GET come from the retriever's own counters (des_s3_range_calls_total,
# des_storage_read_bytes_total), latency from des-loadgen (closed loop,
# CONNECTIONS connections, every answer's bytes checked: any non-2xx or
# mismatch fails the run). Retriever and proxies run on core 0, the load
# generator on core 1.
#
# Goals (issue 17): cold ≤ 64 KiB besides the file in ≤ 3 requests;
# directory cached ≤ 8 KiB besides the file in ≤ 2 requests; cold p50 ≤ 3.3×
# and warm p50 ≤ 1.15× the direct GET's. Each is printed PASS or MISS.
set -euo pipefail

SIZES=${SIZES:-"1000 10000 100000"}
FILE_SIZE=${FILE_SIZE:-4096}   # bytes per file (random, so stored raw)
SAMPLE=${SAMPLE:-100}          # files GET per mode
DURATION=${DURATION:-10s}      # measured load per mode
CONNECTIONS=${CONNECTIONS:-1}   # 1: no two GETs share a cold read (the retriever coalesces them)
DELAY=${DELAY:-10ms}
RATE=${RATE:-}
CREATED_AT=2024-05-17T10:00:00Z

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
# shellcheck source=bench/proxy_lib.sh
source "$root/bench/proxy_lib.sh"
command -v taskset >/dev/null || { echo "missing taskset (util-linux)" >&2; exit 1; }
work=$(mktemp -d /tmp/des-cold-scale.XXXXXX)
name=cold-scale-$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$root/scripts/garage.sh" purge "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

build_bins "$root" -p des-bench-tools
loadgen=${DES_LOADGEN:-$bin/des-loadgen}
garage_up "$name" >/dev/null
garage_website "$DES_S3_BUCKET"
PROXY_CPU=0 proxy_garage "$DELAY" "$RATE"
direct_s3=$AWS_ENDPOINT_URL

# make_files N DIR: N random files named by multiples of 16, which all route
# to shard 0 at --n-bits 4 (numeric uids route by value, SPEC §3.1).
make_files() {
    python3 - "$@" "$FILE_SIZE" <<'PY'
import os, random, sys
n, out, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(n)
os.makedirs(out, exist_ok=True)
for i in range(n):
    with open(os.path.join(out, str((10_000_000 + i) * 16)), "wb") as f:
        f.write(rng.randbytes(size))
PY
}

# metric_sum PORT NAME: the sum of a counter over its labels.
metric_sum() {
    curl -sf "http://127.0.0.1:$1/metrics" |
        awk -v m="$2" 'index($0, m "{") == 1 || index($0, m " ") == 1 { s += $NF } END { printf "%d\n", s }'
}

# start_retriever N EXTRA...: a retriever on store cold-N through the S3 proxy.
start_retriever() {
    local n=$1
    shift
    rport=$(free_port)
    RUST_LOG=warn taskset -c 0 "$retriever_bin" --s3-endpoint "$s3_via_proxy" \
        --store "s3://$DES_S3_BUCKET/cold-$n" --no-auth --listen "127.0.0.1:$rport" --workers 1 \
        --payload-cache-bytes 0 "$@" 2>"$work/retriever-$n.log" &
    rpid=$!
    pids+=("$rpid")
    wait_port "$rport"
}

# measure LABEL BASE PATHS VERIFY [HOST]: one loadgen run; appends a line
# "LABEL requests p50_us p99_us" to $work/runs.
measure() {
    local label=$1 base=$2 paths=$3 verify=$4 host=${5:-}
    local args=(--base "$base" --paths "$paths" --verify "$verify" --connections "$CONNECTIONS"
        --duration "$DURATION" --json)
    if [[ -n $host ]]; then args+=(--host "$host"); fi
    taskset -c 1 "$loadgen" "${args[@]}" >"$work/$label.json" 2>"$work/$label.err" || {
        echo "FAIL: $label: a GET failed or returned wrong bytes" >&2
        cat "$work/$label.err" >&2
        exit 1
    }
    python3 - "$label" "$work/$label.json" >>"$work/runs" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(sys.argv[1], r["requests"], r["p50_us"], r["p99_us"])
PY
}

# retriever_mode N MODE EXTRA...: starts a retriever, optionally warms it,
# measures, and records requests and bytes per GET from its counters.
retriever_mode() {
    local n=$1 mode=$2
    shift 2
    start_retriever "$n" "$@"
    if [[ $mode != cold ]]; then
        # One pass over the sample: the directory (and, warm, every page) cached.
        while read -r p; do
            curl -sf -o /dev/null "http://127.0.0.1:$rport$p"
        done <"$work/paths-$n"
    fi
    local calls0 bytes0
    calls0=$(metric_sum "$rport" des_s3_range_calls_total)
    bytes0=$(metric_sum "$rport" des_storage_read_bytes_total)
    measure "$mode-$n" "http://127.0.0.1:$rport" "$work/paths-$n" "$work/verify-$n"
    local calls bytes
    calls=$(metric_sum "$rport" des_s3_range_calls_total)
    bytes=$(metric_sum "$rport" des_storage_read_bytes_total)
    echo "$mode-$n $((calls - calls0)) $((bytes - bytes0))" >>"$work/storage"
    kill "$rpid"
    wait "$rpid" 2>/dev/null || true
}

for n in $SIZES; do
    echo "== $n entries: writing and packing..." >&2
    src=$work/src-$n
    make_files "$n" "$src"
    "$pack_bin" --s3-endpoint "$direct_s3" --dir "$src" --created-at "$CREATED_AT" \
        --out "s3://$DES_S3_BUCKET/cold-$n" --n-bits 4 --compression none --dict off -q >/dev/null
    : >"$work/paths-$n"
    : >"$work/verify-$n"
    : >"$work/loose-$n"
    python3 -c '
import os, random, sys
names = sorted(os.listdir(sys.argv[2]))
for name in random.Random(7).sample(names, min(int(sys.argv[1]), len(names))):
    print(name)' "$SAMPLE" "$src" | while read -r f; do
        s3_put "$src/$f" "loose-$n/$f"
        printf '/files/%s?created_at=%s\n' "$f" "$CREATED_AT" >>"$work/paths-$n"
        printf '/files/%s?created_at=%s\t%s\n' "$f" "$CREATED_AT" "$src/$f" >>"$work/verify-$n"
        printf '/loose-%s/%s\n' "$n" "$f" >>"$work/loose-$n"
        printf '/loose-%s/%s\t%s\n' "$n" "$f" "$src/$f" >>"$work/loose-verify-$n"
    done
    echo "== $n entries: measuring..." >&2
    retriever_mode "$n" cold --cache-bytes 1 --page-cache-bytes 1
    retriever_mode "$n" directory --page-cache-bytes 1
    retriever_mode "$n" warm
    measure "direct-$n" "http://127.0.0.1:$web_proxy_port" "$work/loose-$n" \
        "$work/loose-verify-$n" "$garage_web_host"
    rm -rf "$src"
done

echo
echo "Garage behind des-latency-proxy: ${DELAY} each way${RATE:+, $RATE per connection}; files of $FILE_SIZE bytes;"
echo "$CONNECTIONS connections, $DURATION per mode; retriever (1 worker) and proxies on core 0, load generator on core 1."
python3 - "$work/runs" "$work/storage" "$FILE_SIZE" "$SIZES" <<'PY'
import sys
runs = {l.split()[0]: list(map(float, l.split()[1:])) for l in open(sys.argv[1])}
storage = {l.split()[0]: list(map(float, l.split()[1:])) for l in open(sys.argv[2])}
file_size, sizes = int(sys.argv[3]), sys.argv[4].split()
print(f"{'entries':>8} {'mode':<10} {'req/GET':>8} {'index KiB/GET':>14} {'p50 ms':>8} {'p99 ms':>8} {'p50/direct':>11}")
verdicts = []
for n in sizes:
    direct_p50 = runs[f"direct-{n}"][1]
    for mode in ["cold", "directory", "warm", "direct"]:
        gets, p50, p99 = runs[f"{mode}-{n}"]
        if mode == "direct":
            req, extra = 1.0, 0.0
        else:
            calls, nbytes = storage[f"{mode}-{n}"]
            req, extra = calls / gets, (nbytes / gets - file_size) / 1024
        print(f"{n:>8} {mode:<10} {req:>8.2f} {extra:>14.1f} {p50/1000:>8.1f} {p99/1000:>8.1f} {p50/direct_p50:>11.2f}")
        if mode == "cold":
            verdicts.append((f"{n}: cold ≤ 3 requests and ≤ 64 KiB besides the file", req <= 3.0 and extra <= 64))
            verdicts.append((f"{n}: cold p50 ≤ 3.3× direct", p50 <= 3.3 * direct_p50))
        if mode == "directory":
            verdicts.append((f"{n}: directory cached ≤ 2 requests and ≤ 8 KiB besides the file", req <= 2.0 and extra <= 8))
        if mode == "warm":
            verdicts.append((f"{n}: warm p50 ≤ 1.15× direct", p50 <= 1.15 * direct_p50))
print()
for what, ok in verdicts:
    print(("PASS " if ok else "MISS ") + what)
PY
