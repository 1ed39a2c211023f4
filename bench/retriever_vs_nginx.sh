#!/usr/bin/env bash
# Warm GETs: des-retriever on a local DES store vs nginx serving the same
# files loose from disk, one core each, with every answer checked.
#
#   bench/retriever_vs_nginx.sh            # defaults below (about 4 min on an idle machine)
#   ROUNDS=3 bench/retriever_vs_nginx.sh   # three rounds, servers interleaved; medians of the ratios
#       (about 9 min idle; each re-measured run adds its length + RETRY_PAUSE)
#   FILES=20000 DURATION=20 CONNECTIONS=64 bench/retriever_vs_nginx.sh
#   DES_PACK=/path/to/des-pack DES_RETRIEVER=/path/to/des-retriever bench/retriever_vs_nginx.sh   # prebuilt binaries (A/B of two builds)
#   PERF=/tmp/retriever.perf bench/retriever_vs_nginx.sh        # also `perf record -g` the
#       retriever during its first saturation run (then: perf report -i /tmp/retriever.perf --no-children)
#
# Servers: des-retriever with its defaults (hot payload cache on, 128 MiB,
# which holds the default file set); des-retriever with
# DES_RETRIEVER_PAYLOAD_CACHE_BYTES=0 (every GET reads, checks and decodes
# its entry from the shard); nginx (sendfile on); nginx with sendfile off
# (nginx-copy: copies each file through a user-space buffer, as any server
# holding the bytes in memory must). WORKERS=1: one retriever worker, one
# nginx worker process.
#
# Pinning: every server process runs on CPU SERVER_CPU (default 0) and the
# load generator, des-loadgen, on LOADGEN_CPU (default 1), so each server
# gets one whole core and never competes with the client for it. The script
# reports how busy each core was (from /proc/stat) and the server's own
# share: a server core below 90 % busy at saturation means something else
# (the client, a cold cache) set the rate, and anything else running on the
# machine shows as "other" CPU: such a run is measured again (RETRIES), and
# flagged in the summary if it stays disturbed. Compare runs only on an idle
# machine.
#
# Every run is checked: des-loadgen verifies the body of VERIFY_SAMPLE files
# (byte-for-byte against the originals) and fails on any non-2xx answer or
# connection error; one failed check fails the whole script (exit 1).
#
# Each round, for each server: the saturation rate (closed loop, CONNECTIONS
# keep-alive connections, DURATION s) with its p99, then the p99 at fixed
# rates of 50 % and 80 % of nginx's saturation rate in that round (open
# loop, RATE_CONNECTIONS connections, RATE_DURATION s; a request held up
# behind the previous answer on its connection is timed from its scheduled
# time, so a stall counts against every request it delays: no coordinated
# omission). Then the retriever's
# /health at saturation: the stack's ceiling (actix, middleware, metrics, a
# small body; no lookup, no read). At the end: medians over the rounds and
# the targets of issue 17 with PASS/MISS (a MISS does not fail the script).
#
# Auth is off and logging at warn for the retriever (nginx: access_log off),
# so both measure serving, not logging.
#
# Needs: nginx (Debian: apt-get install -y nginx), taskset (util-linux),
# curl, python3, cargo, 2 CPUs.
set -euo pipefail

FILES=${FILES:-10000}          # number of files
MIN_SIZE=${MIN_SIZE:-1024}     # bytes
MAX_SIZE=${MAX_SIZE:-16384}    # bytes
DURATION=${DURATION:-15}       # seconds per saturation run
RATE_DURATION=${RATE_DURATION:-10} # seconds per fixed-rate run (after 1 s of warm-up)
WARMUP=${WARMUP:-5}            # seconds of warm-up per server before round 1 (fills caches)
CONNECTIONS=${CONNECTIONS:-32} # keep-alive connections of the saturation runs
# ...and of the fixed-rate runs: enough that a request is rarely due while
# its connection still waits for the previous answer (rate × latency in
# flight; with 32, 53k req/s left 0.6 ms per request and the client's own
# queue, not the server, set the p99).
RATE_CONNECTIONS=${RATE_CONNECTIONS:-256}
N_BITS=${N_BITS:-8}            # shards per day = 2^N_BITS (local reads keep 256 shard files open)
ROUNDS=${ROUNDS:-1}            # measured rounds, servers interleaved in each
WORKERS=${WORKERS:-1}          # retriever workers = nginx worker_processes
SERVER_CPU=${SERVER_CPU:-0}    # the core every server is pinned to
LOADGEN_CPU=${LOADGEN_CPU:-1}  # the core des-loadgen is pinned to
VERIFY_SAMPLE=${VERIFY_SAMPLE:-200} # files whose bodies every run checks
SEED=${SEED:-42}               # des-loadgen's choice of paths
RETRIES=${RETRIES:-2}          # re-measurements of a run disturbed by other work on the machine
RETRY_PAUSE=${RETRY_PAUSE:-10} # seconds to wait before one
WAIT_LIMIT=${WAIT_LIMIT:-0.01} # share of a run the server + des-loadgen may wait for their CPUs
CREATED_AT=2024-05-17T10:00:00Z

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
for tool in nginx taskset curl python3 cargo; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx)" >&2; exit 1; }
done
if ((SERVER_CPU == LOADGEN_CPU)) || (($(nproc) < 2)); then
    echo "needs two CPUs, SERVER_CPU and LOADGEN_CPU different (have $(nproc))" >&2
    exit 1
fi
work=$(mktemp -d /tmp/des-bench.XXXXXX)
chmod 755 "$work" # nginx workers run as an unprivileged user
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

build_bins "$root" -p des-bench-tools
loadgen_bin=${DES_LOADGEN:-$bin/des-loadgen}

echo "writing $FILES files of $MIN_SIZE..$MAX_SIZE bytes..." >&2
write_files "$work/loose" "$FILES" "$MIN_SIZE" "$MAX_SIZE"
(cd "$work/loose" && find . -type f | sed 's|^\./||' | sort) > "$work/uids"
sed "s|^\(.*\)$|/files/\1?created_at=$CREATED_AT|" "$work/uids" > "$work/paths-retriever"
sed 's|^|/|' "$work/uids" > "$work/paths-nginx"
# The verified sample: every k-th file, PATH<TAB>original.
awk -v n="$FILES" -v k="$VERIFY_SAMPLE" 'NR % int(n / k > 1 ? n / k : 1) == 0' "$work/uids" \
    | head -n "$VERIFY_SAMPLE" > "$work/uids-verify"
awk -v w="$work" -v c="$CREATED_AT" '{ printf "/files/%s?created_at=%s\t%s/loose/%s\n", $0, c, w, $0 }' \
    "$work/uids-verify" > "$work/verify-retriever"
awk -v w="$work" '{ printf "/%s\t%s/loose/%s\n", $0, w, $0 }' "$work/uids-verify" > "$work/verify-nginx"

echo "packing..." >&2
"$pack_bin" --dir "$work/loose" --created-at "$CREATED_AT" --out "$work/store" --n-bits "$N_BITS" -q >/dev/null

# pin PID: the process, its threads and its children's, on SERVER_CPU
# (threads and processes created later inherit it).
pin() {
    local p
    for p in "$1" $(pgrep -P "$1" || true); do
        taskset -a -c -p "$SERVER_CPU" "$p" >/dev/null
    done
}

rport=$(free_port)
RUST_LOG=warn taskset -c "$SERVER_CPU" "$retriever_bin" --store "$work/store" --no-auth \
    --listen "127.0.0.1:$rport" --workers "$WORKERS" 2>"$work/retriever.log" &
pids+=($!)
cport=$(free_port)
RUST_LOG=warn DES_RETRIEVER_PAYLOAD_CACHE_BYTES=0 taskset -c "$SERVER_CPU" "$retriever_bin" \
    --store "$work/store" --no-auth --listen "127.0.0.1:$cport" --workers "$WORKERS" \
    2>"$work/retriever-nocache.log" &
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
xport=$(free_port)
nginx_conf nginx-copy "$xport" off
for p in "$rport" "$cport" "$nport" "$xport"; do wait_port "$p"; done
for p in "${pids[@]}"; do pin "$p"; done

# Sanity: all serve the same bytes for one file.
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

# Per server: port, paths, verify file, serving process (each retriever;
# each nginx's worker, a child of the master, which only supervises).
declare -A port=([retriever]=$rport [retriever-nocache]=$cport [nginx]=$nport [nginx-copy]=$xport
    [retriever-health]=$rport)
declare -A paths=([retriever]=paths-retriever [retriever-nocache]=paths-retriever
    [nginx]=paths-nginx [nginx-copy]=paths-nginx [retriever-health]=paths-health)
declare -A verify=([retriever]=verify-retriever [retriever-nocache]=verify-retriever
    [nginx]=verify-nginx [nginx-copy]=verify-nginx)
declare -A serving=([retriever]=${pids[0]} [retriever-nocache]=${pids[1]}
    [nginx]=$(pgrep -P "${pids[2]}" | head -1) [nginx-copy]=$(pgrep -P "${pids[3]}" | head -1)
    [retriever-health]=${pids[0]})
echo /health > "$work/paths-health"

# Busy ticks (user+nice+system+irq+softirq) of one CPU.
core_ticks() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# sched_wait PID: ns its threads have spent runnable but waiting for a CPU
# (schedstat): what other work on its core cost it, however brief.
sched_wait() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%.0f\n", s }'; }

# load NAME SECONDS [RATE]: one des-loadgen run against NAME; prints its JSON
# plus the server's CPU per request and how busy both cores were. Any failed
# check ends the script.
load() {
    local name=$1 secs=$2 rate=${3:-} s0 c0 l0 w0 rc=0 out
    local args=(--base "http://127.0.0.1:${port[$name]}" --paths "$work/${paths[$name]}"
        --duration "${secs}s" --seed "$SEED" --json)
    if [[ -n ${verify[$name]:-} ]]; then args+=(--verify "$work/${verify[$name]}"); fi
    if [[ -n $rate ]]; then
        args+=(--rate "$rate" --warmup 1s --connections "$RATE_CONNECTIONS")
    else
        args+=(--connections "$CONNECTIONS")
    fi
    s0=$(cpu_ticks "${serving[$name]}"); c0=$(core_ticks "$SERVER_CPU"); l0=$(core_ticks "$LOADGEN_CPU")
    w0=$(sched_wait "${serving[$name]}")
    out=$(taskset -c "$LOADGEN_CPU" /usr/bin/time -o "$work/loadgen.time" -f '%U %S' \
        "$loadgen_bin" "${args[@]}" 2>"$work/loadgen.err") || rc=$?
    if ((rc != 0)); then
        echo "des-loadgen against $name failed (exit $rc):" >&2
        cat "$work/loadgen.err" >&2
        exit 1
    fi
    python3 - "$out" "$secs" "$rate" "$s0" "$(cpu_ticks "${serving[$name]}")" "$c0" \
        "$(core_ticks "$SERVER_CPU")" "$l0" "$(core_ticks "$LOADGEN_CPU")" "$(getconf CLK_TCK)" \
        "$(tail -1 "$work/loadgen.time")" "$w0" "$(sched_wait "${serving[$name]}")" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
secs = float(sys.argv[2])
s0, s1, c0, c1, l0, l1, hz = map(int, sys.argv[4:11])
loadgen_cpu = sum(map(float, sys.argv[11].split()))
r["server_wait_ms"] = (float(sys.argv[13]) - float(sys.argv[12])) / 1e6
r["client_wait_ms"] = (r.get("client_wait_us") or 0) / 1e3
# The run lasts its warm-up (1 s in rate mode) plus secs; CPU is over all of it.
wall = secs + (1.0 if sys.argv[3] else 0.0)
answered = r["rps"] * wall
r["cpu_us_per_req"] = (s1 - s0) / hz * 1e6 / answered if answered else None
r["server_busy"] = (s1 - s0) / hz / wall
r["server_core_busy"] = (c1 - c0) / hz / wall
r["loadgen_core_busy"] = (l1 - l0) / hz / wall
r["loadgen_busy"] = loadgen_cpu / wall
print(json.dumps(r))
PY
}

# Whether other work disturbed a run (from its load line): busy time on
# either pinned core beyond what the server and des-loadgen used (the
# /proc/stat and per-process clocks differ by a few %, so only more than
# 10 % of a core counts), or the server or des-loadgen waiting for their
# CPU more than WAIT_LIMIT of the run (a burst too short to show in the
# averages still delays every request due during it).
disturbed() {
    python3 -c '
import json, sys
r, limit = json.loads(sys.argv[1]), float(sys.argv[2])
o = max(r["server_core_busy"] - r["server_busy"], r["loadgen_core_busy"] - r["loadgen_busy"])
w = (r["server_wait_ms"] + r["client_wait_ms"]) / 1000 / r["seconds"]
if o > 0.10 or w > limit:
    print(f"other work +{o:.0%} of a core, waits for a CPU {w:.1%} of the run")' "$1" "$WAIT_LIMIT"
}

# record ROUND NAME MODE SECONDS [RATE]: a run; one line on stdout, its
# JSON appended to the results. A run during which something else used the
# pinned cores is measured again, up to RETRIES times, after a pause.
record() {
    local line why attempt
    for attempt in $(seq 0 "$RETRIES"); do
        line=$(load "$2" "$4" "${5:-}")
        why=$(disturbed "$line")
        if [[ -z $why || $attempt == "$RETRIES" ]]; then break; fi
        echo "round $1 $2 $3: disturbed ($why), measuring again" >&2
        sleep "$RETRY_PAUSE"
    done
    python3 - "$line" "$1" "$2" "$3" "$work/results.jsonl" "$why" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
r.update(round=int(sys.argv[2]), server=sys.argv[3], mode=sys.argv[4], disturbed=sys.argv[6])
with open(sys.argv[5], "a") as f:
    f.write(json.dumps(r) + "\n")
print(f"round {r['round']} {r['server']:<17} {r['mode']:<3} {r['rps']:>7.0f} req/s"
      + (f" (target {r['target_rps']:.0f})" if r["target_rps"] else "")
      + f"  p50 {r['p50_us'] / 1000:.2f} p99 {r['p99_us'] / 1000:.2f} max {r['max_us'] / 1000:.2f} ms"
      + f"  {r['cpu_us_per_req']:.1f} us CPU/req; server {r['server_busy']:.0%} of its core"
      + f" (core {r['server_core_busy']:.0%}), loadgen {r['loadgen_busy']:.0%}"
      + f" (core {r['loadgen_core_busy']:.0%}); CPU waits server {r['server_wait_ms']:.0f}"
      + f" loadgen {r['client_wait_ms']:.0f} ms;"
      + f" verified {r['verified']}" + (f" DISTURBED ({r['disturbed']})" if r["disturbed"] else ""),
      flush=True)
PY
}

echo "load before measuring: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "warm-up ($WARMUP s each, verified)..." >&2
for s in retriever retriever-nocache nginx nginx-copy; do load "$s" "$WARMUP" >/dev/null; done
echo "measuring: $ROUNDS round(s); saturation $DURATION s ($CONNECTIONS connections)," \
    "fixed rates $RATE_DURATION s ($RATE_CONNECTIONS connections); servers on CPU $SERVER_CPU ($WORKERS worker), des-loadgen on CPU $LOADGEN_CPU..." >&2
for round in $(seq 1 "$ROUNDS"); do
    record "$round" nginx sat "$DURATION"
    sat=$(tail -1 "$work/results.jsonl" | python3 -c 'import json, sys; print(json.load(sys.stdin)["rps"])')
    if [[ -n ${PERF:-} && $round == 1 ]]; then
        perf record -q -g -o "$PERF" -p "${pids[0]}" -- sleep "$DURATION" 2>/dev/null &
        perf_pid=$!
    fi
    record "$round" retriever sat "$DURATION"
    if [[ -n ${PERF:-} && $round == 1 ]]; then wait "$perf_pid" || true; fi
    record "$round" retriever-nocache sat "$DURATION"
    record "$round" nginx-copy sat "$DURATION"
    for pct in 50 80; do
        rate=$(python3 -c "print(round($sat * $pct / 100))")
        for s in nginx retriever retriever-nocache nginx-copy; do
            record "$round" "$s" "r$pct" "$RATE_DURATION" "$rate"
        done
    done
    record "$round" retriever-health sat "$DURATION"
done
curl -sf "http://127.0.0.1:$rport/metrics" | awk '
    /^des_payload_cache_hits_total/ { hits = $2 }
    /^des_payload_cache_bytes/ { held = $2 }
    END { printf "hot cache of the default retriever: %s hits, %s bytes held\n", hits, held }'

echo "files=$FILES size=$MIN_SIZE..$MAX_SIZE rounds=$ROUNDS connections=$CONNECTIONS" \
    "rate_connections=$RATE_CONNECTIONS workers=$WORKERS" \
    "load=$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
# Medians and ratios use the undisturbed runs only, all runs if none is.
def get(server, mode):
    all_ = {r["round"]: r for r in runs if r["server"] == server and r["mode"] == mode}
    clean = {k: r for k, r in all_.items() if not r["disturbed"]}
    return clean or all_
med = statistics.median
servers = ["retriever", "retriever-nocache", "nginx", "nginx-copy", "retriever-health"]
print("\nmedians over undisturbed rounds (sat: closed loop; r50/r80: open loop at 50 %/80 % of "
      "nginx's saturation rate in the round, held-up requests timed from their scheduled time)")
print(f"{'server':<18}{'sat req/s':>10}{'p99 ms':>8}{'CPU us/req':>11}{'busy':>6}{'client':>7}"
      f"{'r50 p99':>9}{'r80 p99':>9}{'r80 achieved':>13}")
# busy, client: the server's and des-loadgen's share of their cores at saturation.
for s in servers:
    sat = get(s, "sat")
    if not sat:
        continue
    row = f"{s:<18}{med(r['rps'] for r in sat.values()):>10.0f}"
    row += f"{med(r['p99_us'] for r in sat.values()) / 1000:>8.2f}"
    row += f"{med(r['cpu_us_per_req'] for r in sat.values()):>11.1f}"
    row += f"{med(r['server_busy'] for r in sat.values()):>6.0%}"
    row += f"{med(r['loadgen_busy'] for r in sat.values()):>7.0%}"
    for mode in ("r50", "r80"):
        rr = get(s, mode)
        row += f"{med(r['p99_us'] for r in rr.values()) / 1000:>9.2f}" if rr else f"{'-':>9}"
    rr = get(s, "r80")
    row += f"{med(r['rps'] / r['target_rps'] for r in rr.values()):>13.2f}" if rr else f"{'-':>13}"
    print(row)
low = [f"{r['server']} round {r['round']} ({r['server_busy']:.0%})" for r in runs
       if r["mode"] == "sat" and r["server"] != "retriever-health" and r["server_busy"] < 0.9]
if low:
    print("NOTE server core below 90 % busy at saturation, so the rate was set elsewhere: "
          + ", ".join(low))
# Runs still disturbed after RETRIES re-measurements (as `disturbed`).
other = [f"{r['server']} {r['mode']} round {r['round']}" for r in runs if r["disturbed"]]
if other:
    print("NOTE disturbed by other work on the pinned cores (compare with care): "
          + ", ".join(other))

def ratio(a, b):
    sa, sb = get(a, "sat"), get(b, "sat")
    return [sa[k]["rps"] / sb[k]["rps"] for k in sorted(sa) if k in sb]
print("\ntargets (issue 17; median over undisturbed rounds of the per-round ratio of saturation "
      "req/s, one core each):")
for name, a, b, goal in (
    ("warm GETs, payload cache on  >= 1.0 x nginx sendfile off", "retriever", "nginx-copy", 1.0),
    ("warm GETs, payload cache on  >= 0.9 x nginx default     ", "retriever", "nginx", 0.9),
    ("warm GETs, payload cache off >= 0.8 x nginx sendfile off", "retriever-nocache", "nginx-copy", 0.8),
):
    rs = ratio(a, b)
    if not rs:
        print(f"  {name}: no round with both runs measured")
        continue
    m = med(rs)
    print(f"  {name}: {m:.2f} (rounds {', '.join(f'{x:.2f}' for x in rs)})  "
          f"{'PASS' if m >= goal else 'MISS'}")
PY
