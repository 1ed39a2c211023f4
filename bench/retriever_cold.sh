#!/usr/bin/env bash
# Cold GETs: random files of a set far larger than any cache, each server
# started fresh after the page cache is dropped, so every GET waits for the
# disk (an archive's usual read: a file nobody has asked for in weeks).
# des-retriever on a local DES store vs nginx serving the same files loose,
# with blocking reads (nginx's default) and with `aio threads`.
#
#   bench/retriever_cold.sh DIR                   # DIR: loose files, e.g. the 1M synthetic set
#   STORE=/path/store bench/retriever_cold.sh DIR # a store already packed from DIR
#                                                 #   (--created-at 2024-05-17T10:00:00Z)
#   ROUNDS=3 DURATION=15 CONNECTIONS=32 WORKERS=1 bench/retriever_cold.sh DIR
#   DES_RETRIEVER=/path/to/des-retriever ...      # a prebuilt retriever (A/B of two builds)
#   PERF=/tmp/cold.perf ...                       # also `perf record -g` the retriever's first run
#
# Servers are pinned to core 0, des-loadgen to core 1; every run checks the
# status of every answer and the bytes of VERIFY_SAMPLE files (any non-2xx
# or mismatch ends the script).
# Needs root (it writes /proc/sys/vm/drop_caches), nginx, cargo, taskset.
# Prints one RESULT line per server and round, with the serving processes'
# CPU time (the retriever; every nginx worker) per request and the disk reads and KiB read per request (/proc/diskstats of
# the device holding DIR; the store should be on the same device), then the
# median ratios.
set -euo pipefail

dir=${1:?usage: bench/retriever_cold.sh DIR}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-32}
VERIFY_SAMPLE=${VERIFY_SAMPLE:-200} # files whose bytes every run checks
RATE_SHARE=${RATE_SHARE:-0.5}  # fixed-rate runs: this share of nginx's saturation rps
WORKERS=${WORKERS:-1}          # retriever workers = nginx worker_processes
CREATED_AT=2024-05-17T10:00:00Z

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
[[ $(id -u) == 0 ]] || { echo "needs root: drops the page cache before each run" >&2; exit 1; }
for tool in nginx cargo taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx util-linux)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/des-bench-cold.XXXXXX)
chmod 755 "$work"
server=
serving=()
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

build_bins "$root" -p des-bench-tools
loadgen_bin=${DES_LOADGEN:-$bin/des-loadgen}
store=${STORE:-}
if [[ -z $store ]]; then
    store="$work/store"
    echo "packing $dir..." >&2
    "$pack_bin" --dir "$dir" --created-at "$CREATED_AT" --out "$store" --n-bits 8 -q >/dev/null
fi
chmod o+rx "$dir" # nginx workers run as an unprivileged user
(cd "$dir" && find . -type f | sed 's|^\./||') > "$work/uids"
sed "s|^\(.*\)$|/files/\1?created_at=$CREATED_AT|" "$work/uids" > "$work/paths-retriever"
sed 's|^|/|' "$work/uids" > "$work/paths-nginx"
shuf -n "$VERIFY_SAMPLE" --random-source=<(yes) "$work/uids" > "$work/sample"
awk -v d="$dir" -v at="$CREATED_AT" '{ printf "/files/%s?created_at=%s\t%s/%s\n", $0, at, d, $0 }' \
    "$work/sample" > "$work/verify-retriever"
awk -v d="$dir" '{ printf "/%s\t%s/%s\n", $0, d, $0 }' "$work/sample" > "$work/verify-nginx"
echo "$(wc -l < "$work/uids") files" >&2

device=$(basename "$(df --output=source "$dir" | tail -1)")
disk_reads() { awk -v d="$device" '$3 == d { print $4, $6 }' /proc/diskstats; } # reads, sectors

cpu_of() { local t=0 p; for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }

start() { # name port: starts one server, fresh, on a cold page cache
    sync
    echo 3 > /proc/sys/vm/drop_caches
    case $1 in
        retriever)
            RUST_LOG=warn taskset -c 0 "$retriever_bin" --store "$store" --no-auth --listen "127.0.0.1:$2" \
                --workers "$WORKERS" >>"$work/retriever.log" 2>&1 &
            server=$!
            serving=("$server")
            wait_port "$2"
            ;;
        nginx*)
            local aio=off
            [[ $1 == nginx-aio ]] && aio=threads
            start_nginx "$work" "$1" "$WORKERS" "
    sendfile on;
    aio $aio;
    tcp_nopush on;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$2;
        root $dir;
    }"
            server=$!
            taskset -a -p -c 0 "$server" >/dev/null
            wait_port "$2"
            mapfile -t serving < <(pgrep -P "$server") # every worker, once listening
            for w in "${serving[@]}"; do taskset -a -p -c 0 "$w" >/dev/null; done
            ;;
    esac
}

run() { # round name paths [rate [label]]: one measured run, its line appended to $work/results
    local round=$1 rate=${4:-} label=${5:-$2}
    shift
    local port before_cpu before_reads line
    port=$(free_port)
    start "$1" "$port"
    before_cpu=$(cpu_of "${serving[@]}")
    before_reads=$(disk_reads)
    if [[ -n ${PERF:-} && $1 == retriever && $round == 1 ]]; then
        perf record -q -F 499 -g -o "$PERF" -p "${serving[0]}" -- sleep "$DURATION" 2>/dev/null &
    fi
    local verify=$work/verify-nginx
    [[ $1 == retriever ]] && verify=$work/verify-retriever
    line=$(loadgen_result "$label" "http://127.0.0.1:$port" "$2" "$DURATION" "$verify" "$rate")
    python3 - "round $round $line" "$DURATION" "$before_cpu" "$(cpu_of "${serving[@]}")" "$(getconf CLK_TCK)" \
        "$before_reads" "$(disk_reads)" <<'PY' | tee -a "$work/results"
import sys
line, secs, t0, t1, hz = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:6])
(r0, s0), (r1, s1) = (map(int, a.split()) for a in sys.argv[6:8])
n = float(line.split("rps=")[1].split()[0]) * secs
# A fixed-rate run also has its 1 s warm-up inside the CPU and disk counts.
n = float(line.split("rps=")[1].split()[0]) * (secs + (1 if "-fixed" in line.split()[2] else 0))
print(f"{line} cpu_us_per_req={(t1 - t0) / hz * 1e6 / n:.1f} disk_reads_per_req={(r1 - r0) / n:.2f} "
      f"disk_kib_per_req={(s1 - s0) / 2 / n:.1f}")
PY
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
}

echo "measuring: $ROUNDS rounds of $DURATION s per server, $CONNECTIONS connections, $WORKERS server workers..." >&2
paths_of() { if [[ $1 == retriever ]]; then echo "$work/paths-retriever"; else echo "$work/paths-nginx"; fi; }
for round in $(seq 1 "$ROUNDS"); do
    for name in retriever nginx nginx-aio; do
        run "$round" "$name" "$(paths_of "$name")"
    done
    # p99 at a rate every server sustains: RATE_SHARE of nginx's saturation rps this round.
    rate=$(awk -v r="round $round" -v s="$RATE_SHARE" '$0 ~ "^" r " nginx " {
        sub(/.*rps=/, ""); printf "%d\n", $1 * s }' "$work/results")
    for name in retriever nginx nginx-aio; do
        run "$round" "$name" "$(paths_of "$name")" "$rate" "$name-fixed"
    done
done
ratios "$work/results" retriever nginx nginx-aio
