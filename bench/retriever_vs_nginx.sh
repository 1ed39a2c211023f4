#!/usr/bin/env bash
# Warm GET throughput: des-retriever on a local DES store vs nginx serving the
# same files loose from disk. Same machine, same wrk settings, same random
# mix of files, run back to back.
#
#   bench/retriever_vs_nginx.sh            # defaults below
#   FILES=20000 DURATION=20 CONNECTIONS=64 WORKERS=2 bench/retriever_vs_nginx.sh
#   ROUNDS=5 bench/retriever_vs_nginx.sh   # five measured rounds; medians of the ratios
#   DES_PACK=/path/to/des-pack DES_RETRIEVER=/path/to/des-retriever bench/retriever_vs_nginx.sh   # prebuilt binaries (A/B of two builds)
#   PERF=/tmp/retriever.perf bench/retriever_vs_nginx.sh        # also `perf record -g` the
#       retriever during its measured run (then: perf report -i /tmp/retriever.perf --no-children)
#
# Two retrievers run on the same store: one with its defaults (hot payload
# cache on, 128 MiB, which holds the default file set), one with
# payload_cache_bytes = 0, where every GET reads, checks and decodes its
# entry from the shard.
#
# Needs: wrk and nginx (Debian: apt-get install -y wrk nginx), cargo.
# Prints one RESULT line per server and round (with the serving process's CPU
# time per request: user + system, from /proc), then the ratios round by round
# with their medians. A second nginx with
# sendfile off (nginx-copy) shows how much of nginx's lead is zero-copy.
# Auth is off and logging is at warn for the retriever (nginx: access_log
# off), so both measure serving, not logging.
set -euo pipefail

FILES=${FILES:-10000}          # number of files
MIN_SIZE=${MIN_SIZE:-1024}     # bytes
MAX_SIZE=${MAX_SIZE:-16384}    # bytes
DURATION=${DURATION:-15}       # seconds per measured run
WARMUP=${WARMUP:-5}            # seconds per warm-up run (fills caches)
CONNECTIONS=${CONNECTIONS:-32}
N_BITS=${N_BITS:-8}            # shards per day = 2^N_BITS (local reads keep 256 shard files open)
ROUNDS=${ROUNDS:-1}            # measured rounds, servers interleaved in each
THREADS=${THREADS:-1}          # wrk threads
WORKERS=${WORKERS:-1}          # retriever workers = nginx worker_processes
CREATED_AT=2024-05-17T10:00:00Z

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
for tool in wrk nginx cargo; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk nginx)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/des-bench.XXXXXX)
chmod 755 "$work" # nginx workers run as an unprivileged user
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

build_bins "$root"

echo "writing $FILES files of $MIN_SIZE..$MAX_SIZE bytes..." >&2
write_files "$work/loose" "$FILES" "$MIN_SIZE" "$MAX_SIZE"
(cd "$work/loose" && find . -type f | sed 's|^\./||' | sort) > "$work/uids"
sed "s|^\(.*\)$|/files/\1?created_at=$CREATED_AT|" "$work/uids" > "$work/paths-retriever"
sed 's|^|/|' "$work/uids" > "$work/paths-nginx"

echo "packing..." >&2
"$pack_bin" --dir "$work/loose" --created-at "$CREATED_AT" --out "$work/store" --n-bits "$N_BITS" -q >/dev/null


rport=$(free_port)
RUST_LOG=warn "$retriever_bin" --store "$work/store" --no-auth --listen "127.0.0.1:$rport" \
    --workers "$WORKERS" 2>"$work/retriever.log" &
pids+=($!)
cport=$(free_port)
RUST_LOG=warn DES_RETRIEVER_PAYLOAD_CACHE_BYTES=0 "$retriever_bin" --store "$work/store" \
    --no-auth --listen "127.0.0.1:$cport" --workers "$WORKERS" 2>"$work/retriever-nocache.log" &
pids+=($!)

# nginx_conf NAME PORT SENDFILE: one nginx serving the loose files.
nginx_conf() {
    start_nginx "$work" "$1" "$WORKERS" "
    sendfile $3;
    tcp_nopush on;
    keepalive_requests 1000000;
    open_file_cache max=100000 inactive=60s;
    server {
        listen 127.0.0.1:$2;
        root $work/loose;
    }"
    pids+=($!)
}
nport=$(free_port)
nginx_conf nginx "$nport" on
# The same nginx copying each file through a user-space buffer, as any
# server that holds the bytes in memory must: shows what sendfile is worth.
xport=$(free_port)
nginx_conf nginx-copy "$xport" off
wait_port "$rport"
wait_port "$cport"
wait_port "$nport"
wait_port "$xport"

# Sanity: both serve the same bytes for one file.
first=$(head -1 "$work/uids")
check() { # url
    curl -sf "$1" -o "$work/check" && cmp -s "$work/check" "$work/loose/$first" && return
    echo "wrong answer from $1" >&2
    tail -n 5 "$work/retriever.log" "$work/nginx-error.log" >&2
    exit 1
}
check "http://127.0.0.1:$rport/files/$first?created_at=$CREATED_AT"
check "http://127.0.0.1:$cport/files/$first?created_at=$CREATED_AT"
check "http://127.0.0.1:$nport/$first"
check "http://127.0.0.1:$xport/$first"

# The processes that serve: each retriever, and each nginx's worker (a child
# of the master, which only supervises).
serving=("${pids[0]}" "${pids[1]}" "$(pgrep -P "${pids[2]}" | head -1)" "$(pgrep -P "${pids[3]}" | head -1)")
run() { # name port paths seconds [pid: also print its CPU time per request]
    local before line
    if [[ -n ${5:-} ]]; then before=$(cpu_ticks "$5"); fi
    line=$(PATHS_FILE="$3" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$4s" -s "$root/bench/random_paths.lua" \
        "http://127.0.0.1:$2" | grep '^RESULT' | sed "s/^RESULT/$1/")
    if [[ -z ${5:-} ]]; then echo "$line"; return; fi
    python3 - "$line" "$4" "$before" "$(cpu_ticks "$5")" "$(getconf CLK_TCK)" <<'PY'
import sys
line, secs, t0, t1, hz = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:6])
rps = float(line.split("rps=")[1].split()[0])
print(f"{line} cpu_us_per_req={(t1 - t0) / hz * 1e6 / (rps * secs):.1f}")
PY
}
echo "warm-up ($WARMUP s each)..." >&2
run retriever "$rport" "$work/paths-retriever" "$WARMUP" >/dev/null
run retriever-nocache "$cport" "$work/paths-retriever" "$WARMUP" >/dev/null
run nginx "$nport" "$work/paths-nginx" "$WARMUP" >/dev/null
run nginx-copy "$xport" "$work/paths-nginx" "$WARMUP" >/dev/null
echo "measuring: $ROUNDS rounds of $DURATION s per server ($CONNECTIONS connections, $THREADS wrk threads, $WORKERS server workers)..." >&2
# The stack's ceiling: the same server answering /health (actix, middleware,
# metrics, a small body) with no lookup, no read, no check.
echo /health > "$work/paths-health"
for round in $(seq 1 "$ROUNDS"); do
    if [[ -n ${PERF:-} && $round == 1 ]]; then
        perf record -q -g -o "$PERF" -p "${pids[0]}" -- sleep "$DURATION" 2>/dev/null &
        perf_pid=$!
    fi
    {
        run retriever "$rport" "$work/paths-retriever" "$DURATION" "${serving[0]}"
        run nginx "$nport" "$work/paths-nginx" "$DURATION" "${serving[2]}"
        run retriever-nocache "$cport" "$work/paths-retriever" "$DURATION" "${serving[1]}"
        run nginx-copy "$xport" "$work/paths-nginx" "$DURATION" "${serving[3]}"
        run retriever-health "$rport" "$work/paths-health" "$DURATION" "${serving[0]}"
    } | sed "s/^/round $round /" | tee -a "$work/results"
    if [[ -n ${PERF:-} && $round == 1 ]]; then wait "$perf_pid" || true; fi
done
curl -sf "http://127.0.0.1:$rport/metrics" | awk '
    /^des_payload_cache_hits_total/ { hits = $2 }
    /^des_payload_cache_bytes/ { held = $2 }
    END { printf "hot cache of the default retriever: %s hits, %s bytes held\n", hits, held }'

ratios "$work/results" retriever nginx nginx-copy
ratios "$work/results" retriever-nocache nginx | grep ^ratio
