#!/usr/bin/env bash
# Every benchmark of docs/BENCHMARKS.md, one after the other, each printing
# its ratios against a baseline measured in the same run. Run it on an
# otherwise idle machine: the benchmarks share its cores with their baselines.
#
#   bench/run.sh                 # all sections
#   bench/run.sh pack retrieve   # only these (names below)
#
# Sections (docs/BENCHMARKS.md):
#   pack       1. des-pack vs tar and tar|zstd on the Rust docs (and on the
#                 synthetic set, if $SYNTH is a directory made by gen_synthetic.py)
#   retrieve   2. des-retriever vs nginx, local store, warm
#   cold       2. the same on a cold page cache (needs $SYNTH and root)
#   s3         3. des-retriever on S3 (Garage on loopback) vs direct GETs of loose objects
#   index      4. index cache bytes per entry and RSS (needs $SYNTH: 1M files)
#   repack     5. des-repack MB/s with 10 % and 50 % deleted
#   micro      6. criterion micro-benchmarks of des-format
#   staleness  7. delete staleness across retriever replicas
#   coldscale 12. cold GETs from shards of 1k/10k/100k entries on Garage behind
#                 a 10 ms latency proxy vs direct GETs of loose objects
#   deletion  13. deletions at archive scale: 1M files over 100 days, a 30-day
#                 rule, 100k deletions; requests per day vs the old approach,
#                 tombstone memory, retriever start-up, GET p99
#
# The synthetic set: bench/gen_synthetic.py /path/synth1m 1000000 42 (8.9 GB,
# about 10 minutes), then SYNTH=/path/synth1m bench/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

docs="$(rustc --print sysroot)/share/doc/rust/html"
synth=${SYNTH:-}
sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(pack retrieve cold s3 index repack micro staleness coldscale deletion)

banner() { printf '\n=== %s === %s, %s cores, load %s\n' "$1" "$(date -u +%FT%TZ)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"; }
have_synth() { [[ -n $synth && -d $synth ]]; }

repack_bench() {
    cargo build --release --locked -q -p des-repack --bins --examples
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/des-bench-repack.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the variable is local
    trap "rm -rf '$work'" RETURN
    for pct in 10 50; do
        rm -rf "$work/store"
        target/release/examples/bench_store "$work/store" 2000 100000 "$pct" >/dev/null
        target/release/des-repack --store "$work/store" --min-garbage-ratio 0 --json >"$work/report.json"
        python3 - "$work/report.json" "$pct" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
secs, read, written = r["duration_seconds"], r["bytes_read"], r["bytes_written"]
print(f"RESULT repack deleted={sys.argv[2]}% read_mb={read / 1e6:.0f} written_mb={written / 1e6:.0f} "
      f"seconds={secs:.2f} read_mb_s={read / 1e6 / secs:.0f}")
PY
    done
}

for s in "${sections[@]}"; do
    banner "$s"
    case $s in
        pack)
            bench/pack.sh "$docs"
            if have_synth; then bench/pack.sh "$synth"; else echo "(no \$SYNTH: synthetic set skipped)"; fi
            ;;
        retrieve) bench/retriever_vs_nginx.sh ;;
        cold)
            if have_synth && [[ $EUID -eq 0 ]]; then bench/retriever_cold.sh "$synth"
            else echo "(needs \$SYNTH and root: skipped)"; fi
            ;;
        s3)
            # As root, a private network namespace gives wrk's direct GETs the
            # same quick ACKs the retriever's S3 client has (see the script).
            quick=0
            [[ $EUID -eq 0 ]] && quick=1
            for backend in garage s3s-fs; do QUICKACK=$quick BACKEND=$backend bench/retriever_s3.sh; done
            ;;
        index)
            if have_synth; then bench/index_memory.sh "$synth" 8 20000; else echo "(no \$SYNTH: skipped)"; fi
            ;;
        repack) repack_bench ;;
        micro) cargo bench --locked -p des-format --bench format -- --warm-up-time 1 --measurement-time 3 ;;
        staleness) bench/delete_staleness.sh 10 5 ;;
        coldscale) bench/cold_scale.sh ;;
        deletion) bench/deletion_scale.sh ;;
        *) echo "unknown section $s (see the header of $0)" >&2; exit 2 ;;
    esac
done
