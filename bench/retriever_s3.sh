#!/usr/bin/env bash
# GET throughput from S3: des-retriever on a DES store in S3 (cold and warm)
# vs presigned GETs of the same files stored as loose objects in the same
# bucket, straight from the S3 server. One S3 server on loopback, started
# and removed by this script; same load (des-loadgen) and random mix of files.
# The retriever, the S3 server and the nginx proxy are pinned to core 0,
# des-loadgen to core 1. Every run checks every answer's status and, for
# VERIFY_SAMPLE files, its bytes (retriever and direct GETs): any non-2xx
# or mismatch ends the script. Besides saturation, p99 is measured at a
# fixed rate of RATE_SHARE (default 0.5) of the direct GETs' saturation rate.
#
#   bench/retriever_s3.sh                      # Garage, defaults below
#   BACKEND=s3s-fs bench/retriever_s3.sh       # s3s-fs instead
#   FILES=20000 DURATION=20 CONNECTIONS=64 bench/retriever_s3.sh
#   ROUNDS=3 bench/retriever_s3.sh             # three interleaved rounds; medians of the ratios
#   DES_PACK=/path/to/des-pack DES_RETRIEVER=/path/to/des-retriever bench/retriever_s3.sh   # prebuilt binaries (A/B of two builds)
#   RETRIEVER_ARGS="--suffix-bytes 4096" bench/retriever_s3.sh   # extra retriever options
#   QUICKACK=1 bench/retriever_s3.sh           # root: private netns, loopback route quickack
#   PERF=/tmp/s3.perf bench/retriever_s3.sh    # also `perf record --call-graph dwarf` the
#       retriever for 5 s of its warm run (then: perf report -i /tmp/s3.perf --no-children);
#       PERF_TARGET=server records the S3 server instead
#
# Garage and s3s-fs do not set TCP_NODELAY and write headers and body of a
# GET as two segments, so a client that delays its ACK (Linux, on a pooled
# connection: 40 ms) waits ~44 ms per request. des-storage re-arms
# TCP_QUICKACK on plain-http S3 connections; des-loadgen does not, so by
# default the direct baseline is stalled. QUICKACK=1 runs everything in a private network
# namespace whose loopback route has `quickack 1`, so every client ACKs at
# once and the direct baseline is fair (needs root; cargo runs offline there).
#
# Needs: curl, python3, cargo, taskset, and the server (scripts/garage.sh install,
# scripts/s3s-fs.sh install). Prints RESULT lines for: direct (loose objects
# from the server, after a warm-up), direct-ranged (presigned range GETs of
# the packed entries in their shards, straight from the server: the storage
# request a retriever miss makes, without the retriever), nginx-proxy (the
# same ranged GETs through nginx as a keep-alive reverse proxy, when nginx is
# installed: what any proxy in front of the server costs, with no index, no
# check and no decoding), retriever-cold (fresh process, first
# DURATION s: index reads happen here) and retriever-warm (the next DURATION
# s), with storage requests per GET from the retriever's /metrics
# (des_s3_range_calls_total / des_retrievals_total), then warm/direct ratios
# and how the gap splits between the server (ranged/direct) and the
# retriever (warm/ranged).
# s3s-fs 0.14.1 answers 500 to a suffix range longer than the object, so with
# it keep shards above the retriever's 64 KiB suffix read (FILES >= ~5000 at
# n-bits 8) or pass RETRIEVER_ARGS="--suffix-bytes 4096".
set -euo pipefail

BACKEND=${BACKEND:-garage}     # garage | s3s-fs
FILES=${FILES:-10000}          # number of files
MIN_SIZE=${MIN_SIZE:-1024}     # bytes
MAX_SIZE=${MAX_SIZE:-16384}    # bytes
DURATION=${DURATION:-15}       # seconds per measured run
WARMUP=${WARMUP:-5}            # seconds of warm-up for the direct run
CONNECTIONS=${CONNECTIONS:-32}
VERIFY_SAMPLE=${VERIFY_SAMPLE:-200} # files whose bytes every run checks
RATE_SHARE=${RATE_SHARE:-0.5}  # fixed-rate runs: this share of direct's saturation rps
WORKERS=${WORKERS:-1}          # retriever workers
ROUNDS=${ROUNDS:-1}            # measured rounds of direct, ranged, proxy and warm, interleaved
N_BITS=${N_BITS:-8}
CREATED_AT=2024-05-17T10:00:00Z

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
if [[ ${QUICKACK:-0} == 1 && -z ${DES_BENCH_NETNS:-} ]]; then
    exec unshare -n env DES_BENCH_NETNS=1 "$0" "$@"
fi
if [[ -n ${DES_BENCH_NETNS:-} ]]; then
    ip link set lo up
    ip route change local 127.0.0.0/8 dev lo table local scope host quickack 1
    ip route change local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1 quickack 1
fi
for tool in curl python3 cargo taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y curl util-linux)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/des-bench-s3.XXXXXX)
garage_name=bench-s3-$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $BACKEND == garage ]]; then "$root/scripts/garage.sh" purge "$garage_name" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT


build_bins "$root" -p des-storage --example s3_loose -p des-bench-tools
loadgen_bin=${DES_LOADGEN:-$bin/des-loadgen}

echo "starting $BACKEND..." >&2
case $BACKEND in
    garage)
        eval "$("$root/scripts/garage.sh" start "$garage_name")"
        server_pid=$(cat "${DES_GARAGE_STATE:-/tmp/des-garage}/$garage_name/pid")
        taskset -a -p -c 0 "$server_pid" >/dev/null
        ;;
    s3s-fs)
        s3s_bin=${S3S_FS_BIN:-$(command -v s3s-fs 2>/dev/null || echo "$HOME/.cargo/bin/s3s-fs")}
        [[ -x $s3s_bin ]] || { echo "s3s-fs not found: run scripts/s3s-fs.sh install" >&2; exit 1; }
        sport=$(free_port)
        mkdir -p "$work/s3s/des"
        AWS_ACCESS_KEY_ID=AK$(openssl rand -hex 8)
        AWS_SECRET_ACCESS_KEY=$(openssl rand -hex 20)
        export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
        export AWS_ENDPOINT_URL=http://127.0.0.1:$sport AWS_REGION=us-east-1
        export DES_S3_FORCE_PATH_STYLE=1 DES_S3_BUCKET=des
        RUST_LOG=warn taskset -c 0 "$s3s_bin" --host 127.0.0.1 --port "$sport" --access-key "$AWS_ACCESS_KEY_ID" \
            --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3s" >"$work/s3s.log" 2>&1 &
        server_pid=$!
        pids+=("$server_pid")
        wait_port "$sport"
        ;;
    *) echo "BACKEND must be garage or s3s-fs" >&2; exit 2 ;;
esac
s3_port=${AWS_ENDPOINT_URL##*:}

echo "writing $FILES files of $MIN_SIZE..$MAX_SIZE bytes..." >&2
write_files "$work/loose" "$FILES" "$MIN_SIZE" "$MAX_SIZE"

echo "uploading loose objects to s3://des/loose and presigning GETs..." >&2
# Lines "uid<TAB>/des/loose/uid?X-Amz-...", sorted by uid.
"$bin/examples/s3_loose" "$work/loose" des loose 86400 > "$work/presigned"
cut -f1 "$work/presigned" > "$work/uids"
cut -f2 "$work/presigned" > "$work/paths-direct"
sed "s|^\(.*\)$|/files/\1?created_at=$CREATED_AT|" "$work/uids" > "$work/paths-retriever"
# PATH<TAB>FILE for a fixed sample: what des-loadgen compares answers with.
python3 - "$work" "$VERIFY_SAMPLE" "$CREATED_AT" <<'PY'
import random, sys
work, n, at = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = [l.rstrip("\n").split("\t") for l in open(f"{work}/presigned")]
sample = random.Random(7).sample(lines, min(n, len(lines)))
with open(f"{work}/verify-direct", "w") as d, open(f"{work}/verify-retriever", "w") as r:
    for uid, path in sample:
        d.write(f"{path}\t{work}/loose/{uid}\n")
        r.write(f"/files/{uid}?created_at={at}\t{work}/loose/{uid}\n")
PY

echo "packing to s3://des/store..." >&2
"$pack_bin" --dir "$work/loose" --created-at "$CREATED_AT" --out s3://des/store \
    --n-bits "$N_BITS" -q >/dev/null

echo "presigning the packed entries' shard ranges..." >&2
"$bin/examples/s3_loose" "$work/loose" des store 86400 --shard-ranges "$CREATED_AT" \
    | cut -f2,3 > "$work/paths-ranged"

# An nginx reverse proxy in front of the server, for the ranged GETs.
pport=
if command -v nginx >/dev/null; then
    pport=$(free_port)
    start_nginx "$work" nginx "$WORKERS" "
    upstream s3 { server 127.0.0.1:$s3_port; keepalive 64; }
    server {
        listen 127.0.0.1:$pport;
        location / {
            proxy_pass http://s3;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host 127.0.0.1:$s3_port;
            proxy_buffering off;
        }
    }"
    pids+=($!)
    taskset -a -p -c 0 "$!" >/dev/null
    wait_port "$pport"
fi

rport=$(free_port)
read -ra extra <<<"${RETRIEVER_ARGS:-}"
RUST_LOG=warn taskset -c 0 "$retriever_bin" --store s3://des/store --no-auth --listen "127.0.0.1:$rport" \
    --workers "$WORKERS" "${extra[@]}" 2>"$work/retriever.log" &
retriever_pid=$!
pids+=("$retriever_pid")
wait_port "$rport"

run() { # name base-url paths seconds [rate]: every answer checked, see loadgen_result
    local verify=
    case $3 in
        */paths-direct) verify=$work/verify-direct ;;
        */paths-retriever) verify=$work/verify-retriever ;;
    esac
    loadgen_result "$1" "$2" "$3" "$4" "$verify" "${5:-}"
}
# "storage-requests GETs" from the retriever's metrics.
counts() {
    curl -sf "http://127.0.0.1:$rport/metrics" | awk '
        /^des_s3_range_calls_total\{/ { s += $NF }
        /^des_retrievals_total\{/ { g += $NF }
        END { printf "%d %d\n", s, g }'
}
# All CPUs, busy ticks (user+nice+system+irq+softirq): shows what else ran.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# A measured retriever run: RESULT line plus storage requests per GET and
# the CPU seconds of the retriever, of the S3 server and of the whole machine
# (all cores; des-loadgen and anything else running make up the difference).
measure() { # name
    local before after b_r b_s b_m line
    before=$(counts); b_r=$(cpu_ticks "$retriever_pid"); b_s=$(cpu_ticks "$server_pid")
    b_m=$(machine_ticks)
    line=$(run "$1" "http://127.0.0.1:$rport" "$work/paths-retriever" "$DURATION")
    after=$(counts)
    python3 - "$line" "$before" "$after" "$b_r" "$(cpu_ticks "$retriever_pid")" \
        "$b_s" "$(cpu_ticks "$server_pid")" "$b_m" "$(machine_ticks)" "$(getconf CLK_TCK)" <<'PY'
import sys
line, before, after = sys.argv[1:4]
r0, r1, s0, s1, m0, m1, hz = map(int, sys.argv[4:11])
(s_b, g_b), (s_a, g_a) = (map(int, x.split()) for x in (before, after))
calls, gets = s_a - s_b, g_a - g_b
per = calls / gets if gets else float("nan")
print(f"{line} storage_requests={calls} gets={gets} per_get={per:.3f}"
      f" retriever_cpu_s={(r1 - r0) / hz:.1f} server_cpu_s={(s1 - s0) / hz:.1f}"
      f" machine_cpu_s={(m1 - m0) / hz:.1f}")
PY
}

# Sanity: the server and the retriever return the original bytes for one file.
first=$(head -1 "$work/uids")
check() { # url
    curl -sf "$1" -o "$work/check" && cmp -s "$work/check" "$work/loose/$first" && return
    echo "wrong answer from $1; first errors:" >&2
    grep -h -m 3 -A 3 ERROR "$work"/*.log >&2 || true
    exit 1
}
check "http://127.0.0.1:$s3_port$(head -1 "$work/paths-direct")"
echo "sanity check: direct GET of $first is byte-identical" >&2
IFS=$'\t' read -r rpath rrange < <(head -1 "$work/paths-ranged")
rlen=$(curl -sf -H "Range: $rrange" "http://127.0.0.1:$s3_port$rpath" | wc -c)
want=$(python3 -c "a, b = '${rrange#bytes=}'.split('-'); print(int(b) - int(a) + 1)")
[[ $rlen == "$want" ]] || { echo "ranged GET returned $rlen bytes, wanted $want" >&2; exit 1; }

echo "load before measuring: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "measuring ($DURATION s each, $CONNECTIONS connections, $WORKERS retriever workers on core 0, des-loadgen on core 1)..." >&2
direct() { # name paths [port]: warm-up in the first round, then a measured run with CPU seconds
    local b_s b_m line port=${3:-$s3_port}
    if [[ $round == 1 ]]; then run "$1" "http://127.0.0.1:$port" "$2" "$WARMUP" >/dev/null; fi
    b_s=$(cpu_ticks "$server_pid"); b_m=$(machine_ticks)
    line=$(run "$1" "http://127.0.0.1:$port" "$2" "$DURATION")
    echo "$line $(python3 -c "hz = $(getconf CLK_TCK); print(f'server_cpu_s={($(cpu_ticks "$server_pid") - $b_s) / hz:.1f} machine_cpu_s={($(machine_ticks) - $b_m) / hz:.1f}')")"
}
summary() { # one round's ratios and CPU per GET, from $d $g $p $w
python3 - "$DURATION" "$w" "$d" "$g" "${p:-}" <<'PY'
import re, sys
secs = float(sys.argv[1])
w, d, g, p = ({k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", s)} for s in sys.argv[2:6])
print(f"ratio warm/direct rps = {w['rps'] / d['rps']:.2f}"
      f"  p50 {w['p50_ms']:.2f}/{d['p50_ms']:.2f} ms  p99 {w['p99_ms']:.2f}/{d['p99_ms']:.2f} ms")
print(f"split: server alone, ranged/direct = {g['rps'] / d['rps']:.2f};"
      f" retriever on top, warm/ranged = {w['rps'] / g['rps']:.2f}")
if p:
    print(f"any proxy: nginx-proxy/direct = {p['rps'] / d['rps']:.2f}, warm/nginx-proxy = {w['rps'] / p['rps']:.2f}")
for name, r in (("direct", d), ("direct-ranged", g), ("nginx-proxy", p), ("retriever-warm", w)):
    if not r:
        continue
    gets = r["rps"] * secs
    cpu = {k: r[k] / gets * 1000 for k in ("server_cpu_s", "machine_cpu_s", "retriever_cpu_s") if k in r}
    print(f"  {name}: ms CPU per GET " + " ".join(f"{k[:-6]}={v:.3f}" for k, v in cpu.items()))
PY
}
# Cold: the retriever has not served anything yet (the check below would warm one shard).
c=$(measure retriever-cold)
echo "$c"
for round in $(seq 1 "$ROUNDS"); do
    d=$(direct direct "$work/paths-direct")
    g=$(direct direct-ranged "$work/paths-ranged")
    if [[ -n $pport ]]; then p=$(direct nginx-proxy "$work/paths-ranged" "$pport"); fi
    if [[ -n ${PERF:-} && $round == 1 ]]; then
        (sleep 2 && perf record -q --call-graph dwarf,16384 -F 1000 -o "$PERF" \
            -p "$([[ ${PERF_TARGET:-} == server ]] && echo "$server_pid" || echo "$retriever_pid")" \
            -- sleep 5 2>/dev/null) &
        perf_pid=$!
    fi
    w=$(measure retriever-warm)
    if [[ -n ${PERF:-} && $round == 1 ]]; then wait "$perf_pid" || true; fi
    printf '%s\n' "$d" "$g" ${p:+"$p"} "$w" | sed "s/^/round $round /" | tee -a "$work/results"
    summary
done
# p99 at a fixed rate both can sustain: RATE_SHARE of direct's saturation rps.
rate=$(python3 -c "import re, sys; print(round(float(re.search(r'rps=([0-9.]+)', sys.argv[1]).group(1)) * $RATE_SHARE))" "$d")
fd=$(run direct-fixed "http://127.0.0.1:$s3_port" "$work/paths-direct" "$DURATION" "$rate")
fw=$(run retriever-warm-fixed "http://127.0.0.1:$rport" "$work/paths-retriever" "$DURATION" "$rate")
echo "fixed rate $rate req/s ($RATE_SHARE of direct's saturation): $fd"
echo "fixed rate $rate req/s ($RATE_SHARE of direct's saturation): $fw"
check "http://127.0.0.1:$rport/files/$first?created_at=$CREATED_AT"
echo "sanity check: retriever GET of $first is byte-identical" >&2
echo "backend=$BACKEND quickack_route=${QUICKACK:-0} files=$FILES rounds=$ROUNDS load=$(cut -d' ' -f1-3 /proc/loadavg)"
ratios "$work/results" retriever-warm direct direct-ranged nginx-proxy | grep ^ratio
ratios "$work/results" direct-ranged direct | grep ^ratio
ratios "$work/results" nginx-proxy direct | grep ^ratio
