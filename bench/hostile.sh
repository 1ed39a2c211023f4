#!/usr/bin/env bash
# Hostile load (issue 15): does the retriever keep serving small files while
# slow and half-open clients hold connections? Loopback only, bounded in time.
#
#   bench/hostile.sh                                  # defaults below (~3 min)
#   DURATION=15 LEAD=5 bench/hostile.sh               # shorter
#   RETRIEVER_ARGS="--max-big-streams 64 --max-connections 4096" bench/hostile.sh
#   DES_RETRIEVER=/path/to/des-retriever bench/hostile.sh   # a prebuilt retriever (A/B)
#   OUT=/tmp/hostile-results bench/hostile.sh         # keep results there (default: a new /tmp dir)
#
# Setup: a temp local store packed by des-pack from FILES small files
# (MIN_SIZE..MAX_SIZE bytes, lib.sh's fixed-seed mix) and BIG_FILES big ones
# (BIG_MIN_MIB..BIG_MAX_MIB MiB of random bytes, fixed seed) with
# --big-file-threshold BIG_THRESHOLD, so the big ones are `_big/` objects.
# The retriever runs with --no-auth, RUST_LOG=warn, its defaults plus
# RETRIEVER_ARGS (word-split), pinned to core RETRIEVER_CORE; wrk, the
# hostile clients, curl and the samplers run on LOAD_CORES.
#
# 0. SAMPLE small files and one big file are byte-checked (curl vs originals).
# 1. quiet: WARMUP s of wrk (fills the hot cache; not measured), then wrk
#    for DURATION s, CONNECTIONS connections, random small files
#    (bench/status_paths.lua: bench/random_paths.lua plus status counts).
# 2. hostile: bench/hostile_clients.py opens SLOW connections that GET a big
#    file (HOSTILE_MODE: full, range = `Range: bytes=0-`, mix = half each)
#    and read one byte per second through a 4 KiB SO_RCVBUF, and HALFOPEN
#    connections that send part of a request and then nothing (each is
#    re-opened when the server closes it). Once they are up (at most
#    RAMP_TIMEOUT s) and LEAD s more have passed, the same wrk runs again.
#    Meanwhile the retriever's RSS and thread count are sampled every second
#    and one curl of a small file per second (PROBE_TIMEOUT s at most) looks
#    for stalls; at the end SAMPLE small files are byte-checked under load and
#    /metrics is saved.
#
# Prints a table: quiet vs hostile req/s and p99, their p99 ratio, small-file
# non-2xx and socket errors, the byte checks, the probes, max and peak RSS
# (VmHWM), max threads, who used the CPUs during each run, the hostile
# clients' counts and the retriever's log warnings/errors and /metrics
# counters of interest. Goal misses are MISS lines (recorded, not fatal):
# p99 ratio > P99_GOAL_RATIO, peak RSS > RSS_GOAL_MIB, under hostile load any
# small-file socket error, probe failed or slower than STALL_SECS, or
# small file not fetched in PROBE_TIMEOUT s, or req/s under 5% of quiet.
# NOISE lines say other processes (a build) used the CPUs during a run.
# Exits non-zero (FAIL lines) on any small-file non-2xx answer (wrk or byte
# check), wrong bytes, a socket error or failed byte check in the quiet run,
# or a retriever that died. Results (wrk outputs, hostile client JSON,
# samples, probes, CPU marks, metrics, retriever log, summary) stay in OUT.
#
# Needs: wrk (apt-get install -y wrk), curl, python3, taskset, cargo.
set -euo pipefail

FILES=${FILES:-20000}          # small files
MIN_SIZE=${MIN_SIZE:-1024}     # bytes
MAX_SIZE=${MAX_SIZE:-8192}     # bytes
BIG_FILES=${BIG_FILES:-20}
BIG_MIN_MIB=${BIG_MIN_MIB:-8}
BIG_MAX_MIB=${BIG_MAX_MIB:-32}
BIG_THRESHOLD=${BIG_THRESHOLD:-4M} # des-pack --big-file-threshold (below BIG_MIN_MIB)
N_BITS=${N_BITS:-8}
DURATION=${DURATION:-30}       # seconds per measured wrk run
WARMUP=${WARMUP:-5}            # seconds of wrk before the quiet run
CONNECTIONS=${CONNECTIONS:-256}
THREADS=${THREADS:-1}          # wrk threads
WRK_TIMEOUT=${WRK_TIMEOUT:-10} # wrk --timeout (s): slower answers count as timeouts
SLOW=${SLOW:-1000}             # slow-reading connections
HALFOPEN=${HALFOPEN:-200}      # half-open connections
HOSTILE_MODE=${HOSTILE_MODE:-mix}
REOPEN_DELAY=${REOPEN_DELAY:-1} # seconds a hostile client waits before re-opening (also after a 503)
RAMP_TIMEOUT=${RAMP_TIMEOUT:-20}
LEAD=${LEAD:-10}               # seconds of hostile load before wrk starts
SAMPLE=${SAMPLE:-20}           # small files byte-checked (quiet and under load)
PROBE_TIMEOUT=${PROBE_TIMEOUT:-5}
STALL_SECS=${STALL_SECS:-2}    # a probe slower than this counts as a stall
RSS_GOAL_MIB=${RSS_GOAL_MIB:-512}
P99_GOAL_RATIO=${P99_GOAL_RATIO:-3}
RETRIEVER_ARGS=${RETRIEVER_ARGS:-}
RETRIEVER_CORE=${RETRIEVER_CORE:-0}
LOAD_CORES=${LOAD_CORES:-1}
CREATED_AT=2024-05-17T10:00:00Z

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
for tool in wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk curl util-linux)" >&2; exit 1; }
done
if [[ -z ${DES_RETRIEVER:-} || -z ${DES_PACK:-} ]]; then
    command -v cargo >/dev/null || { echo "missing cargo (or set DES_RETRIEVER and DES_PACK)" >&2; exit 1; }
fi
read -r -a extra_args <<< "$RETRIEVER_ARGS"

# Every connection is a file descriptor, here and in the retriever (which
# inherits this limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
need_fds=$((SLOW + HALFOPEN + CONNECTIONS + 1024))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $need_fds ]]; then
    echo "warning: open-file limit $(ulimit -n) < $need_fds wanted" >&2
fi

pin_server=(taskset -c "$RETRIEVER_CORE")
pin_load=(taskset -c "$LOAD_CORES")
if (($(nproc) < 2)); then
    echo "warning: one CPU: nothing pinned, the load shares the retriever's core" >&2
    pin_server=()
    pin_load=()
fi

work=$(mktemp -d /tmp/des-hostile.XXXXXX)
out=${OUT:-$(mktemp -d /tmp/des-hostile-out.XXXXXX)}
mkdir -p "$out"
pids=()
rpid=
client_pid=
wrk_pid=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    local p
    for p in "${pids[@]}" "$wrk_pid" "$client_pid" "$rpid"; do
        if [[ -n $p ]]; then kill "$p" 2>/dev/null || true; fi
    done
    # The retriever drains in-flight requests on SIGTERM; 5 s, then SIGKILL.
    if [[ -n $rpid ]]; then
        for _ in $(seq 1 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
    fi
    for p in "$client_pid" "$rpid"; do
        if [[ -n $p ]]; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_bins "$root"

echo "writing $FILES small files of $MIN_SIZE..$MAX_SIZE bytes and $BIG_FILES big ones of $BIG_MIN_MIB..$BIG_MAX_MIB MiB..." >&2
write_files "$work/loose" "$FILES" "$MIN_SIZE" "$MAX_SIZE"
python3 - "$work/loose/big" "$BIG_FILES" "$BIG_MIN_MIB" "$BIG_MAX_MIB" <<'PY'
import os, random, sys
out, n, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20, int(sys.argv[4]) << 20
os.makedirs(out, exist_ok=True)
rng = random.Random(4242)
for i in range(n):
    with open(os.path.join(out, f"b{i:03d}.bin"), "wb") as f:
        f.write(rng.randbytes(rng.randint(lo, hi)))
PY
(cd "$work/loose" && find . -type f ! -path './big/*' | sed 's|^\./||' | sort) > "$work/uids-small"
(cd "$work/loose" && find big -type f | sort) > "$work/uids-big"
sed "s|^\(.*\)$|/files/\1?created_at=$CREATED_AT|" "$work/uids-small" > "$work/paths-small"
sed "s|^\(.*\)$|/files/\1?created_at=$CREATED_AT|" "$work/uids-big" > "$work/paths-big"

echo "packing..." >&2
"$pack_bin" --dir "$work/loose" --created-at "$CREATED_AT" --out "$work/store" --n-bits "$N_BITS" \
    --big-file-threshold "$BIG_THRESHOLD" -q > "$out/pack.txt"
big_objects=$(find "$work/store" -path '*_big/*' -type f ! -name '*.chunks' | wc -l)
if ((big_objects < BIG_FILES)); then
    echo "FAIL: only $big_objects _big/ objects in the store for $BIG_FILES big files" >&2
    exit 1
fi

port=$(free_port)
echo "retriever: --no-auth ${RETRIEVER_ARGS:+$RETRIEVER_ARGS }on core $RETRIEVER_CORE, port $port" >&2
# taskset execs the retriever: $! is the retriever's pid.
RUST_LOG=${RUST_LOG:-warn} "${pin_server[@]}" "$retriever_bin" --store "$work/store" --no-auth \
    --listen "127.0.0.1:$port" "${extra_args[@]}" 2>"$out/retriever.log" &
rpid=$!
alive() { kill -0 "$rpid" 2>/dev/null; }
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    alive || break
    sleep 0.1
done
if ! alive || ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "FAIL: the retriever did not start (a flag in RETRIEVER_ARGS it does not know?):" >&2
    tail -n 5 "$out/retriever.log" >&2
    exit 1
fi
base="http://127.0.0.1:$port"

# byte_check NAME N MAX_TIME: curls N small files spread over the set (plus,
# for NAME=quiet, the first big file), each within MAX_TIME s, and compares
# them with the originals; prints "MISMATCHES NON_2XX FAILED" (failed: no
# complete answer in time, or the connection failed).
byte_check() {
    local name=$1 n=$2 max_time=$3 mismatch=0 non2xx=0 failed=0 total step uid sample code
    total=$(wc -l < "$work/uids-small")
    step=$((total / n > 0 ? total / n : 1))
    mapfile -t sample < <(awk -v s="$step" -v n="$n" 'NR % s == 1 && c++ < n' "$work/uids-small")
    [[ $name == quiet ]] && sample+=("$(head -1 "$work/uids-big")")
    for uid in "${sample[@]}"; do
        rm -f "$work/check"
        if code=$(curl -s --max-time "$max_time" -o "$work/check" -w '%{http_code}' \
            "$base/files/$uid?created_at=$CREATED_AT"); then
            if [[ $code != 2?? ]]; then
                echo "byte check ($name): HTTP $code for $uid" >&2
                non2xx=$((non2xx + 1))
            elif ! cmp -s "$work/check" "$work/loose/$uid"; then
                echo "byte check ($name): wrong bytes for $uid" >&2
                mismatch=$((mismatch + 1))
            fi
        else
            echo "byte check ($name): no complete answer for $uid in $max_time s (HTTP ${code:-none})" >&2
            failed=$((failed + 1))
        fi
    done
    echo "$mismatch $non2xx $failed"
}

read -r bad_q_bytes bad_q_status bad_q_failed < <(byte_check quiet "$SAMPLE" 60)
if ((bad_q_bytes + bad_q_status + bad_q_failed)); then
    echo "FAIL: byte check on the quiet retriever: $bad_q_bytes wrong, $bad_q_status non-2xx, $bad_q_failed failed" >&2
    tail -n 5 "$out/retriever.log" >&2
    exit 1
fi

# Samplers: RSS and threads every second; one small-file probe per second.
echo quiet > "$work/phase"
(
    while [[ -r /proc/$rpid/status ]]; do
        awk -v phase="$(cat "$work/phase")" -v now="$(date +%s)" '/^VmRSS:/ { r = $2 } /^Threads:/ { t = $2 }
            END { if (r != "") print phase, now, r, t }' "/proc/$rpid/status" >> "$out/samples.txt" 2>/dev/null || true
        sleep 1
    done
) &
pids+=($!)
(
    n=$(wc -l < "$work/paths-small")
    while [[ -d /proc/$rpid ]]; do
        path=$(sed -n "$(((RANDOM * 32768 + RANDOM) % n + 1))p" "$work/paths-small")
        r=$(curl -s -o /dev/null --max-time "$PROBE_TIMEOUT" -w '%{http_code} %{time_total}' "$base$path" || true)
        echo "$(cat "$work/phase") ${r:-000 $PROBE_TIMEOUT}" >> "$out/probes.txt"
        sleep 1
    done
) &
pids+=($!)

# cpu_mark NAME: appends to OUT/cpu-NAME.txt one line of clock ticks used so
# far: by all processes on the machine (/proc/stat user + nice + system),
# steal, the retriever, the hostile client, this shell's waited-for children
# (wrk), the uptime in ticks, and irq + softirq (loopback traffic is handled
# there, charged to no process). Two marks around a run tell who used the
# CPUs during it (another build on the machine makes a run worthless). Must
# run in this shell, not a subshell: `times` counts this shell's children.
hz=$(getconf CLK_TCK)
cpu_mark() {
    local kids busy steal irq r c=0 up
    times > "$work/times"
    kids=$(awk -v hz="$hz" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } printf "%d", t * hz }' "$work/times")
    read -r busy steal irq < <(awk '/^cpu / { print $2 + $3 + $4, $9, $7 + $8 }' /proc/stat)
    r=$(cpu_ticks "$rpid" 2>/dev/null || echo 0)
    if [[ -n $client_pid ]]; then c=$(cpu_ticks "$client_pid" 2>/dev/null || echo 0); fi
    up=$(awk -v hz="$hz" '{ printf "%d", $1 * hz }' /proc/uptime)
    echo "$busy $steal $r $c $kids $up $irq" >> "$out/cpu-$1.txt"
}

run_wrk() { # name seconds: wrk on the small files; its RESULT line in $result
    cpu_mark "$1"
    # In the background and waited for, so a signal is handled at once.
    PATHS_FILE="$work/paths-small" timeout $(($2 + WRK_TIMEOUT + 30)) "${pin_load[@]}" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2s" --timeout "${WRK_TIMEOUT}s" --latency \
        -s "$root/bench/status_paths.lua" "$base" > "$out/wrk-$1.txt" 2>&1 &
    wrk_pid=$!
    wait "$wrk_pid" || true
    wrk_pid=
    cpu_mark "$1"
    result=$(grep '^RESULT' "$out/wrk-$1.txt" | tail -1 || true)
}

echo "warm-up ($WARMUP s)..." >&2
echo warmup > "$work/phase"
run_wrk warmup "$WARMUP"
warm=$result
echo "quiet run ($DURATION s, $CONNECTIONS connections)..." >&2
echo quiet > "$work/phase"
run_wrk quiet "$DURATION"
quiet=$result
echo "quiet: ${quiet:-no RESULT (see $out/wrk-quiet.txt)}" >&2
quiet_rss_hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$rpid/status" 2>/dev/null || true)

echo "hostile clients: $SLOW slow readers ($HOSTILE_MODE), $HALFOPEN half-open..." >&2
echo hostile-ramp > "$work/phase"
"${pin_load[@]}" python3 "$root/bench/hostile_clients.py" --port "$port" --big-paths "$work/paths-big" \
    --small-path "$(head -1 "$work/paths-small")" --slow "$SLOW" --halfopen "$HALFOPEN" \
    --mode "$HOSTILE_MODE" --reopen-delay "$REOPEN_DELAY" --ramp-timeout "$RAMP_TIMEOUT" --ready-file "$work/ready" \
    --duration $((RAMP_TIMEOUT + LEAD + DURATION + WRK_TIMEOUT + 120)) \
    > "$out/hostile.json" 2> "$out/hostile.log" &
client_pid=$!
for _ in $(seq 1 $(((RAMP_TIMEOUT + 10) * 10))); do
    [[ -s $work/ready ]] && break
    kill -0 "$client_pid" 2>/dev/null || { echo "FAIL: hostile client died" >&2; cat "$out/hostile.log" >&2; exit 1; }
    sleep 0.1
done
cp "$work/ready" "$out/hostile-ramp.json" 2>/dev/null || true
cat "$out/hostile.log" >&2
echo hostile-lead > "$work/phase"
sleep "$LEAD" &
wait $! || true
echo "hostile run ($DURATION s, $CONNECTIONS connections)..." >&2
echo hostile > "$work/phase"
run_wrk hostile "$DURATION"
hostile=$result
echo "hostile: ${hostile:-no RESULT (see $out/wrk-hostile.txt)}" >&2
read -r bad_h_bytes bad_h_status bad_h_failed < <(byte_check hostile "$SAMPLE" "$PROBE_TIMEOUT")
curl -s --max-time 10 "$base/metrics" > "$out/metrics.txt" || echo "(no /metrics answer in 10 s)" >&2
echo hostile-end > "$work/phase"
if alive; then
    awk '/^(VmHWM|VmRSS|Threads):/ { print $1, $2 }' "/proc/$rpid/status" > "$out/status-end.txt"
    retriever_alive=1
else
    retriever_alive=0
fi
kill -TERM "$client_pid" 2>/dev/null || true
for _ in $(seq 1 150); do kill -0 "$client_pid" 2>/dev/null || break; sleep 0.1; done
kill "$client_pid" 2>/dev/null || true
wait "$client_pid" 2>/dev/null || true
client_pid=

# The retriever's own log: warnings and errors.
log_warn=$(grep -c ' WARN ' "$out/retriever.log" || true)
log_error=$(grep -c ' ERROR ' "$out/retriever.log" || true)

echo
status=0
python3 - "$out" "$warm" "$quiet" "$hostile" "$quiet_rss_hwm" "$retriever_alive" "$bad_h_bytes" "$bad_h_status" "$bad_h_failed" \
    "$log_warn" "$log_error" "$P99_GOAL_RATIO" "$RSS_GOAL_MIB" "$STALL_SECS" "$RETRIEVER_ARGS" \
    > "$out/summary.txt" <<'PY' || status=$?
import json, os, re, sys
(out, warm, quiet, hostile, quiet_hwm, alive, bad_h_bytes, bad_h_status, bad_h_failed, log_warn, log_error,
 p99_goal, rss_goal, stall_secs, rargs) = sys.argv[1:]
bad_h_bytes, bad_h_status, bad_h_failed = int(bad_h_bytes), int(bad_h_status), int(bad_h_failed)
p99_goal, rss_goal, stall_secs = float(p99_goal), float(rss_goal), float(stall_secs)
fails, misses = [], []

def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line or "")}

q, h, w = kv(quiet), kv(hostile), kv(warm)
for name, r in (("quiet", q), ("hostile", h)):
    if not r:
        fails.append(f"no wrk result for the {name} run (see wrk-{name}.txt)")

def non2xx(r):
    return int(r.get("s3xx", 0) + r.get("s4xx", 0) + r.get("s5xx", 0))

def sock(r):
    return int(sum(r.get(k, 0) for k in ("connect", "read", "write", "timeout")))

status_end = {}
if os.path.exists(f"{out}/status-end.txt"):
    for line in open(f"{out}/status-end.txt"):
        k, v = line.split()
        status_end[k.rstrip(":")] = int(v)
samples = [l.split() for l in open(f"{out}/samples.txt")] if os.path.exists(f"{out}/samples.txt") else []
def phase_max(col, phases):
    vals = [int(s[col]) for s in samples if s[0] in phases and len(s) > col]
    return max(vals) if vals else 0
hostile_phases = ("hostile-ramp", "hostile-lead", "hostile", "hostile-end")
threads_q, threads_h = phase_max(3, ("quiet", "warmup")), phase_max(3, hostile_phases)
rss_q, rss_h = phase_max(2, ("quiet", "warmup")) / 1024, phase_max(2, hostile_phases) / 1024
hwm = status_end.get("VmHWM", 0) / 1024 or max(rss_q, rss_h)
probes = [l.split() for l in open(f"{out}/probes.txt")] if os.path.exists(f"{out}/probes.txt") else []
def probe_stats(phases):
    ps = [(p[1], float(p[2])) for p in probes if p[0] in phases and len(p) >= 3]
    bad = [p for p in ps if p[0] != "200" or p[1] > stall_secs]
    return len(ps), len(bad), max((t for _, t in ps), default=0.0)
pq, ph = probe_stats(("quiet",)), probe_stats(hostile_phases)
try:
    hc = json.load(open(f"{out}/hostile.json"))
except (OSError, ValueError):
    hc = {}

def f(x, fmt="{:.0f}"):
    return fmt.format(x) if x is not None else "-"

ratio = h["p99_ms"] / q["p99_ms"] if q.get("p99_ms") and "p99_ms" in h else None
rows = [
    ("", "quiet", "hostile", "goal"),
    ("small GETs req/s", f(q.get("rps")), f(h.get("rps")), ""),
    ("small GETs p50 ms", f(q.get("p50_ms"), "{:.2f}"), f(h.get("p50_ms"), "{:.2f}"), ""),
    ("small GETs p99 ms", f(q.get("p99_ms"), "{:.2f}"), f(h.get("p99_ms"), "{:.2f}"), ""),
    ("p99 hostile/quiet", "", f(ratio, "{:.2f}"), f"<= {p99_goal:g}"),
    ("small requests", f(q.get("requests")), f(h.get("requests")), ""),
    ("small non-2xx", str(non2xx(q)), str(non2xx(h)), "0"),
    ("  of which 5xx", f(q.get("s5xx")), f(h.get("s5xx")), "0"),
    ("  of which 429", f(q.get("s429")), f(h.get("s429")), ""),
    ("small socket errors", str(sock(q)), str(sock(h)), "0"),
    ("  (connect/read/write/timeout)",
     "/".join(f(q.get(k)) for k in ("connect", "read", "write", "timeout")),
     "/".join(f(h.get(k)) for k in ("connect", "read", "write", "timeout")), ""),
    ("byte check: wrong/non-2xx/failed", "0/0/0", f"{bad_h_bytes}/{bad_h_status}/{bad_h_failed}", "0/0/0"),
    ("probe 1/s: n, failed|slow, max s", f"{pq[0]}, {pq[1]}, {pq[2]:.2f}", f"{ph[0]}, {ph[1]}, {ph[2]:.2f}",
     f"0 over {stall_secs:g} s"),
    ("max RSS MiB (sampled)", f(rss_q), f(rss_h), ""),
    ("peak RSS MiB (VmHWM)", f(int(quiet_hwm or 0) / 1024), f(hwm), f"<= {rss_goal:g}"),
    ("max threads", str(threads_q), str(threads_h), ""),
]
def cpu(name):
    """Cores used during run NAME: retriever, load generators, others, steal."""
    try:
        (b0, s0, r0, c0, k0, u0, i0), (b1, s1, r1, c1, k1, u1, i1) = (
            list(map(int, l.split())) for l in open(f"{out}/cpu-{name}.txt"))
    except (OSError, ValueError):
        return None
    el = max(1, u1 - u0)
    load = (k1 - k0) + (c1 - c0)
    return {"retriever": (r1 - r0) / el, "load": load / el,
            "other": max(0, (b1 - b0) - (r1 - r0) - load) / el, "steal": (s1 - s0) / el,
            "irq": (i1 - i0) / el}
cq, ch = cpu("quiet"), cpu("hostile")
for key, label in (("retriever", "CPU cores: retriever"), ("load", "CPU cores: wrk + hostile client"),
                   ("irq", "CPU cores: irq + softirq (network)"),
                   ("other", "CPU cores: other processes"), ("steal", "CPU cores: steal (VM)")):
    rows.append((label, f((cq or {}).get(key), "{:.2f}"), f((ch or {}).get(key), "{:.2f}"),
                 "~0" if key in ("other", "steal") else ""))
width = [max(len(r[i]) for r in rows) for i in range(4)]
print(f"retriever args: --no-auth {rargs}".rstrip())
for r in rows:
    print("  ".join(c.ljust(width[i]) if i == 0 else c.rjust(width[i]) for i, c in enumerate(r)))
print(f"retriever log: {log_warn} WARN, {log_error} ERROR lines")
for kind in ("slow", "halfopen"):
    k = hc.get(kind)
    if k:
        st = " ".join(f"{s}={n}" for s, n in k["statuses"].items() if n)
        print(f"hostile {kind}: attempts={k['attempts']} established={k['established']} "
              f"connect_errors={k['connect_errors']} open_max={k['open_max']} open_at_end={k['open_at_end']} "
              f"statuses[{st or 'none'}] no_status={k['no_status']} closed_by_server={k['closed_by_server']} "
              f"reset_by_server={k['reset_by_server']} body_bytes={k['body_bytes']} "
              f"other_errors={k.get('errors') or 0}")
if hc:
    print(f"hostile clients: ramp {hc.get('ramp_secs')} s, complete={hc.get('ramp_complete')}, "
          f"ran {hc.get('duration_secs')} s")
else:
    print("hostile clients: no summary (see hostile.log)")
mpath = f"{out}/metrics.txt"
mlines = [l.rstrip() for l in open(mpath)] if os.path.exists(mpath) else []
pat = re.compile(r"^des_\S*(overload|reject|in_flight|streams|connections|retrievals_total)")
for l in mlines:
    if pat.search(l):
        print(f"metrics: {l}")
if not mlines:
    print("metrics: no /metrics answer at the end of the hostile run")

if alive != "1":
    fails.append("the retriever died during the hostile run")
for name, r in (("quiet", q), ("hostile", h)):
    if r and non2xx(r):
        fails.append(f"{non2xx(r)} non-2xx small-file responses in the {name} run "
                     f"({int(r.get('s5xx', 0))} 5xx, {int(r.get('s4xx', 0))} 4xx, {int(r.get('s3xx', 0))} 3xx)")
if q and sock(q):
    fails.append(f"{sock(q)} socket errors in the quiet run")
if bad_h_bytes or bad_h_status:
    fails.append(f"byte check under hostile load: {bad_h_bytes} files with wrong bytes, {bad_h_status} non-2xx")
if bad_h_failed:
    misses.append(f"byte check under hostile load: {bad_h_failed} files without a complete answer in time (stall)")
if ratio is not None and ratio > p99_goal:
    misses.append(f"p99 hostile/quiet {ratio:.2f} > {p99_goal:g}")
if hwm > rss_goal:
    misses.append(f"peak RSS {hwm:.0f} MiB > {rss_goal:g} MiB")
if h and sock(h):
    misses.append(f"{sock(h)} small-file socket errors under hostile load (timeouts: stalls)")
if ph[1]:
    misses.append(f"{ph[1]} of {ph[0]} probes failed or took over {stall_secs:g} s under hostile load (stall)")
if h and q.get("rps") and h.get("rps", 0) < 0.05 * q["rps"]:
    misses.append(f"hostile req/s {h.get('rps', 0):.0f} < 5% of quiet (stall)")
for name, c in (("quiet", cq), ("hostile", ch)):
    if c and (c["other"] > 0.25 or c["steal"] > 0.1):
        print(f"NOISE: during the {name} run other processes used {c['other']:.2f} cores and steal was "
              f"{c['steal']:.2f} cores: its numbers are not trustworthy, run again on a quiet machine")
for m in misses:
    print(f"MISS: {m}")
for m in fails:
    print(f"FAIL: {m}")
print("RESULT " + ("FAIL" if fails else "PASS") + (f" ({len(misses)} goal misses)" if misses else " (all goals met)"))
sys.exit(1 if fails else 0)
PY
cat "$out/summary.txt"
echo "results in $out" >&2
exit "$status"
