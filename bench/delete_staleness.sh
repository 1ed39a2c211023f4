#!/usr/bin/env bash
# How long after a DELETE on one retriever replica another replica keeps
# serving the file: two des-retriever processes on one local store, DELETE
# on A, then GET on B every 20 ms until it answers 410. Repeated ROUNDS
# times; prints each delay and the max (bound: the poll interval).
#
#   bench/delete_staleness.sh [POLL_SECS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."

poll=${1:-10}
rounds=${2:-5}
at=2024-05-17T10:00:00Z
work=$(mktemp -d "${TMPDIR:-/tmp}/des-bench-stale.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked -q -p des-packer -p des-retriever
bin=target/release
mkdir -p "$work/src"
for i in $(seq 1 "$rounds"); do echo "file $i" >"$work/src/f$i.txt"; done
"$bin/des-pack" --dir "$work/src" --created-at "$at" --out "$work/store" -q >/dev/null
for port in 18291 18292; do
    RUST_LOG=warn "$bin/des-retriever" --store "$work/store" --no-auth --listen "127.0.0.1:$port" \
        --tombstone-poll-interval-secs "$poll" >"$work/r$port.log" 2>&1 &
    pids+=($!)
done
for port in 18291 18292; do
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
done
max=0
for i in $(seq 1 "$rounds"); do
    url="files/f$i.txt?created_at=$at"
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:18292/$url") == 200 ]] || { echo "B does not serve f$i" >&2; exit 1; }
    start=$(date +%s%N)
    code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "http://127.0.0.1:18291/$url&reason=gdpr")
    [[ $code == 202 ]] || { echo "DELETE answered $code" >&2; exit 1; }
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:18291/$url") == 410 ]] || { echo "A still serves f$i" >&2; exit 1; }
    while [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:18292/$url") != 410 ]]; do sleep 0.02; done
    ms=$((($(date +%s%N) - start) / 1000000))
    echo "f$i: replica B answered 410 after $ms ms"
    ((ms > max)) && max=$ms
    # Spread the rounds over the poll cycle.
    sleep "0.$((RANDOM % 10))"
done
echo "max staleness ${max} ms with a ${poll} s poll interval ($rounds rounds)"
