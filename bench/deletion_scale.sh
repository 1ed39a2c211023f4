#!/usr/bin/env bash
# Deletions at archive scale: a synthetic local store of DAYS × FILES_PER_DAY
# files (the last day today, UTC) under a rule "keep RETENTION_DAYS days",
# DELETIONS individual deletions spread over the days, one repack a day
# (max_delay 0: every pending deletion applied each run, the strict GDPR
# setting). des-deletion-scale (bench-tools) drives the packer, add_batch
# (as `des-tombstones add --from`) and the repacker as libraries and counts
# every storage request; it prints per simulated day the objects written and
# requests sent for deletion, next to the old approach's (code before
# retention rules and the compacted log, computed from the same run:
# 2 PUTs per deleted or expired file + the same shard writes + a LIST of
# the whole log), and the repack run time. Then STARTUP_DELETIONS more
# deletions are applied and compacted, and the tombstone set's load time
# and memory measured in process.
#
# This script then measures, on the final store:
#   - des-retriever start-up: spawn until GET /health answers 200 (it loads
#     every tombstone before it listens), median of 3, for the store and for
#     a hard-linked copy without _tombstones/ and _tombstones_applied/;
#   - GET p50/p99 of SAMPLE live files, retriever (1 worker) on core 0 and
#     des-loadgen on core 1, at RATE/s for DURATION and at saturation, on
#     both stores (every answer's bytes checked: any non-2xx or mismatch
#     fails the run); and that deleted files answer 410.
#
#   bench/deletion_scale.sh                     # defaults below
#   DAYS=10 FILES_PER_DAY=2000 DELETIONS=2000 STARTUP_DELETIONS=20000 bench/deletion_scale.sh
#   KEEP=1 bench/deletion_scale.sh              # keep the work directory
#   DES_RETRIEVER=/path/to/des-retriever bench/deletion_scale.sh   # a prebuilt retriever
#   TRACE_REQUESTS=1 bench/deletion_scale.sh    # also print every counted request (driver's stderr)
#
# Goals (deletion-scale issue): requests and objects written per day
# proportional to shards touched, ≥ 100× fewer than the old approach;
# ≤ 16 bytes of tombstone memory per applied deletion; retriever start-up
# ≤ 2 s with 1,000,000 deletions; GET p99 unchanged by deletions. Each is
# printed PASS or MISS; the script fails only on errors.
set -euo pipefail

DAYS=${DAYS:-100}
FILES_PER_DAY=${FILES_PER_DAY:-10000}
DELETIONS=${DELETIONS:-100000}
STARTUP_DELETIONS=${STARTUP_DELETIONS:-1000000}
RETENTION_DAYS=${RETENTION_DAYS:-30}
N_BITS=${N_BITS:-4}  # every uid routes to shard 0: one shard of FILES_PER_DAY entries per day
SEED=${SEED:-42}
SAMPLE=${SAMPLE:-200}
RATE=${RATE:-2000}
DURATION=${DURATION:-10}       # seconds per load run
CONNECTIONS=${CONNECTIONS:-32}
STARTS=${STARTS:-3}            # retriever start-ups timed per store and round
ROUNDS=${ROUNDS:-2}            # interleaved rounds of both stores; medians over rounds

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
command -v taskset >/dev/null || { echo "missing taskset (util-linux)" >&2; exit 1; }
command -v curl >/dev/null || { echo "missing curl" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/des-deletion-scale.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "building (release)..." >&2
packages=(-p des-bench-tools)
[[ -n ${DES_RETRIEVER:-} ]] || packages+=(-p des-retriever)
cargo build --release -q --manifest-path "$root/Cargo.toml" "${packages[@]}"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
retriever_bin=${DES_RETRIEVER:-$bin/des-retriever}
loadgen_bin=${DES_LOADGEN:-$bin/des-loadgen}
started=$SECONDS

echo "== simulating $DAYS days of $FILES_PER_DAY files..." >&2
trace=()
if [[ -n "${TRACE_REQUESTS:-}" ]]; then trace=(--trace-requests); fi
"$bin/des-deletion-scale" --dir "$work/store" --out "$work/out" --days "$DAYS" \
    --files-per-day "$FILES_PER_DAY" --deletions "$DELETIONS" --retention-days "$RETENTION_DAYS" \
    --n-bits "$N_BITS" --startup-deletions "$STARTUP_DELETIONS" --sample "$SAMPLE" --seed "$SEED" \
    "${trace[@]}" >"$work/driver.txt"
cat "$work/driver.txt"

# The same store without any deletion loaded (the rule stays): hard links,
# so it costs no space; nothing writes to either store from here on.
cp -al "$work/store" "$work/store-nodel"
rm -rf "$work/store-nodel/_tombstones" "$work/store-nodel/_tombstones_applied"

# start_retriever STORE: a retriever on core 0 ($rport, $rpid); sets
# $startup_s to the seconds from spawn until /health answers 200.
start_retriever() {
    rport=$(free_port)
    local t0=$EPOCHREALTIME
    RUST_LOG=warn taskset -c 0 "$retriever_bin" --store "$1" --no-auth \
        --listen "127.0.0.1:$rport" --workers 1 2>>"$work/retriever.log" &
    rpid=$!
    pids+=("$rpid")
    for _ in $(seq 1 3000); do
        if curl -sf -o /dev/null "http://127.0.0.1:$rport/health"; then
            startup_s=$(python3 -c "print(f'{$EPOCHREALTIME - $t0:.3f}')")
            return
        fi
        kill -0 "$rpid" 2>/dev/null || { echo "des-retriever on $1 exited" >&2; tail "$work/retriever.log" >&2; exit 1; }
        sleep 0.005
    done
    echo "des-retriever on $1 never answered /health" >&2
    exit 1
}

stop_retriever() {
    kill "$rpid"
    wait "$rpid" 2>/dev/null || true
}

: >"$work/results"
checked_410=0
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which store goes first, so drift (another build, thermal)
    # does not always land on the same one.
    order=(store store-nodel)
    if ((round % 2 == 0)); then order=(store-nodel store); fi
    for store in "${order[@]}"; do
        echo "== round $round, $store: retriever start-up x$STARTS, GETs..." >&2
        for i in $(seq 1 "$STARTS"); do
            start_retriever "$work/$store"
            echo "startup $store $round.$i $startup_s" >>"$work/results"
            stop_retriever
        done
        start_retriever "$work/$store"
        # Deleted files answer 410 while their tombstones are loaded.
        if [[ $store == store ]] && ((checked_410 == 0)); then
            while read -r p; do
                code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$rport$p")
                if [[ $code != 410 ]]; then
                    echo "FAIL: deleted file $p answered $code, not 410" >&2
                    exit 1
                fi
                checked_410=$((checked_410 + 1))
            done <"$work/out/deleted"
        fi
        loadgen_result "$store-rate-$round" "http://127.0.0.1:$rport" "$work/out/paths" "$DURATION" \
            "$work/out/verify" "$RATE" >>"$work/results"
        loadgen_result "$store-sat-$round" "http://127.0.0.1:$rport" "$work/out/paths" "$DURATION" \
            "$work/out/verify" >>"$work/results"
        stop_retriever
    done
done

echo
echo "$checked_410 deleted files answered 410."
echo "retriever: 1 worker on core 0, des-loadgen on core 1, $CONNECTIONS connections, ${DURATION}s per run,"
echo "$ROUNDS interleaved rounds (medians over rounds);"
echo "start-up = spawn until GET /health answers 200 (tombstones are loaded before the port opens)."
python3 - "$work/results" "$work/out/summary.json" "$RATE" "$((SECONDS - started))" <<'PY'
import json, statistics, sys
lines = [l.split() for l in open(sys.argv[1])]
summary = json.load(open(sys.argv[2]))
rate, elapsed = sys.argv[3], int(sys.argv[4])
startup, runs = {}, {}
for l in lines:
    if l[0] == "startup":
        startup.setdefault(l[1], []).append(float(l[3]))
    else:
        name = l[0].rsplit("-", 1)[0]
        runs.setdefault(name, []).append(dict(f.split("=", 1) for f in l[1:]))
# Per store and mode: the median over rounds of each figure.
load = {name: {k: f"{statistics.median(float(r[k]) for r in rs):.2f}" for k in ("rps", "p50_ms", "p99_ms")}
        for name, rs in runs.items()}
for name, rs in runs.items():
    print(f"rounds {name}: p99 ms {', '.join(r['p99_ms'] for r in rs)}; req/s {', '.join(r['rps'] for r in rs)}")
st = summary.get("startup") or {}
deletions = st.get("set_len", 0)
med = {k: statistics.median(v) for k, v in startup.items()}
for k, v in startup.items():
    print(f"start-up {k:<12} median {med[k]:.3f} s (runs: {', '.join(f'{x:.3f}' for x in v)})")
for mode, label in [("rate", f"{rate}/s"), ("sat", "saturation")]:
    a, b = load[f"store-{mode}"], load[f"store-nodel-{mode}"]
    for name, r in [("with deletions", a), ("without", b)]:
        print(f"GET {label:<11} {name:<15} rps={float(r['rps']):.0f} p50={r['p50_ms']} ms p99={r['p99_ms']} ms")
    print(f"GET {label:<11} p99 with/without deletions: {float(a['p99_ms']) / float(b['p99_ms']):.2f}")
verdicts = [
    (med["store"] <= 2.0, f"retriever start-up ≤ 2 s with {deletions} deletions ({med['store']:.3f} s)"),
]
a, b = load["store-rate"], load["store-nodel-rate"]
ratio = float(a["p99_ms"]) / float(b["p99_ms"])
verdicts.append((ratio <= 1.10, f"GET p99 at {rate}/s unchanged by deletions (≤ 1.10×: {ratio:.2f}×)"))
for ok, what in verdicts:
    print(("PASS " if ok else "MISS ") + what)

# A block for docs/BENCHMARKS.md.
s, d = summary["summary"], summary["days"]
old = summary["old"]
cfg = summary["settings"]
print()
print("---- summary for docs/BENCHMARKS.md ----")
print(f"`bench/deletion_scale.sh`: {cfg['days']} days × {cfg['files_per_day']:,} files (n_bits {cfg['n_bits']}), "
      f"rule {cfg['retention_days']} days, {cfg['deletions']:,} individual deletions, one repack a day with "
      f"max_delay 0 (strict GDPR: every pending deletion applied each run); requests counted by a wrapper "
      f"around the local store. Old approach computed, not measured: 2 PUTs per deleted or expired file + the "
      f"same shard writes + a LIST of the whole log. Run time {elapsed} s.")
print()
print("| day | deleted | expired | shards touched | objects written | requests | old: written | old: requests | repack s |")
print("|---|---|---|---|---|---|---|---|---|")
n = len(d)
picks = sorted({0, 1, min(n - 1, cfg['retention_days']), min(n - 1, cfg['retention_days'] + 1),
                min(n - 1, cfg['retention_days'] + 2), n // 2, n - 1})
for i in picks:
    x, o = d[i], old[i]
    c = {k: x["add"][k] + x["repack"][k] for k in x["add"]}
    written = c["put"] + c["put_writer"]
    reqs = sum(c[k] for k in ("put", "put_writer", "delete", "get", "head", "list"))
    print(f"| {i} | {x['deletions']} | {x['expired']} | {x['shards_rewritten'] + x['shards_deleted']} | "
          f"{written} | {reqs} | {o['objects_written']} | {o['requests']} | {x['repack_seconds']:.2f} |")
print(f"| total | {s['deletions']} | {s['expired']} | {s['shards_touched']} | {s['objects_written']} | "
      f"{s['requests']} | {s['old_objects_written']} | {s['old_requests']} | median {s['repack_seconds_median']:.2f} |")
print()
print(f"Old/new: objects written {s['ratio_objects_written']:.1f}×, requests {s['ratio_requests']:.1f}×; "
      f"add_batch {s['add_requests_per_deletion']:.2f} requests per deletion, repack "
      f"{s['repack_requests_per_shard_touched']:.1f} per shard touched.")
if st:
    print(f"Start-up with {st['set_len']:,} deletions ({st['segments']} segments): TombstoneSet::load "
          f"{st['load_seconds_median']:.3f} s in process, des-retriever spawn-to-/health {med['store']:.3f} s "
          f"(without deletions {med['store-nodel']:.3f} s); applied-deletion memory "
          f"{st['applied_heap_bytes'] / max(st['set_len'], 1):.2f} B each ({st['heap_bytes']:,} B in all). "
          f"Objects: _tombstones/ {st['objects_tombstones']}, segments {st['objects_segments']}, "
          f"_tombstones_applied/ {st['objects_applied']}.")
for mode, label in [("rate", f"{rate}/s"), ("sat", "saturation")]:
    a, b = load[f"store-{mode}"], load[f"store-nodel-{mode}"]
    print(f"GET {label}: p50/p99 {a['p50_ms']}/{a['p99_ms']} ms with deletions, {b['p50_ms']}/{b['p99_ms']} ms without"
          + (f" ({float(a['rps']):.0f} vs {float(b['rps']):.0f} req/s)" if mode == "sat" else "") + ".")
PY
grep -E '^(PASS|MISS)' "$work/driver.txt" || true
