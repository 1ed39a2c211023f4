# shellcheck shell=bash
# Network-path helpers for benchmarks of cold reads from object storage
# (bench/cold_scale.sh): a Garage instance whose bucket also answers
# anonymous plain GETs (its web endpoint, for "a direct GET of a loose
# object"), and des-latency-proxy in front of its S3 and web ports, so every
# request pays a real round trip (DELAY each way, default 10ms) and,
# optionally, a bandwidth cap per connection (RATE, e.g. 100MB/s).
#
# Source it after bench/lib.sh, with $root (the repository) and $work (a
# scratch directory) set and a pids array the caller's cleanup kills; it
# defines functions only. Typical use:
#
#   build_bins "$root" -p des-bench-tools
#   garage_up "bench-cold-$$"            # then: "$root/scripts/garage.sh" purge "bench-cold-$$" on exit
#   garage_website des
#   s3_put "$work/loose/a.bin" loose/a.bin
#   proxy_garage                          # DELAY=10ms RATE= by default
#   curl -H "Host: $garage_web_host" "http://127.0.0.1:$web_proxy_port/loose/a.bin"
#   AWS_ENDPOINT_URL=$s3_via_proxy "$retriever_bin" --store s3://des/store ...
#
# Run it directly for a self-test: `bench/proxy_lib.sh selftest` starts a
# Garage instance, uploads a file, GETs it through the web proxy and checks
# each GET takes at least 2 x DELAY, then removes everything.

# garage_bin: the garage binary scripts/garage.sh uses.
garage_bin() { echo "${GARAGE_BIN:-$(command -v garage 2>/dev/null || echo "$HOME/.cargo/bin/garage")}"; }

# garage_up NAME: starts (or reuses) Garage instance NAME with scripts/garage.sh
# (bucket "des", one key that reads and writes it), exports its S3 settings
# (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ..., DES_S3_BUCKET) and sets
# garage_dir, garage_pid, garage_s3_port and garage_web_port (the [s3_web]
# endpoint in the instance's config).
# shellcheck disable=SC2034 # these are for the sourcing script
garage_up() {
    local name=$1
    eval "$("$root/scripts/garage.sh" start "$name")"
    garage_dir=${DES_GARAGE_STATE:-/tmp/des-garage}/$name
    garage_pid=$(cat "$garage_dir/pid")
    garage_s3_port=${AWS_ENDPOINT_URL##*:}
    garage_web_port=$(sed -n 's/^WEB_PORT=//p' "$garage_dir/settings")
    if [[ -z $garage_web_port ]]; then
        echo "garage '$name' has no web port in $garage_dir/settings" >&2
        return 1
    fi
}

# garage_website BUCKET: makes BUCKET's objects readable by anyone with a
# plain GET on the web port, as Garage picks the site by name: with the
# header "Host: $garage_web_host" (BUCKET.web.garage).
# shellcheck disable=SC2034
garage_website() {
    "$(garage_bin)" -c "$garage_dir/garage.toml" bucket website --allow "$1" >/dev/null
    garage_web_host=$1.web.garage
}

# s3_put FILE KEY [BUCKET]: uploads FILE as KEY with a signed PUT (curl's
# SigV4), for loose objects without any DES tool.
s3_put() {
    local file=$1 key=$2 bucket=${3:-${DES_S3_BUCKET:-des}}
    curl -sSf --aws-sigv4 "aws:amz:${AWS_REGION:-garage}:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        -T "$file" "$AWS_ENDPOINT_URL/$bucket/$key" >/dev/null
}

# start_latency_proxy UPSTREAM_PORT [DELAY [RATE]]: des-latency-proxy on a
# free port in front of 127.0.0.1:UPSTREAM_PORT (DELAY each way, default
# $DELAY or 10ms; RATE per connection per direction, default $RATE or none);
# pinned to PROXY_CPU if set. Sets proxy_port and proxy_pid, and adds the pid
# to pids. Waits for the proxy's "listening" line.
# shellcheck disable=SC2034
start_latency_proxy() {
    local upstream=$1 delay=${2:-${DELAY:-10ms}} rate=${3:-${RATE:-}}
    local bin_=${DES_LATENCY_PROXY:-${bin:?run build_bins first}/des-latency-proxy}
    local out=$work/proxy-$upstream.out
    local cmd=("$bin_" --upstream "127.0.0.1:$upstream" --delay "$delay")
    if [[ -n $rate ]]; then cmd+=(--rate "$rate"); fi
    if [[ -n ${PROXY_CPU:-} ]]; then cmd=(taskset -c "$PROXY_CPU" "${cmd[@]}"); fi
    "${cmd[@]}" >"$out" 2>"$work/proxy-$upstream.log" &
    proxy_pid=$!
    pids+=("$proxy_pid")
    for _ in $(seq 1 200); do
        proxy_port=$(sed -n 's/^listening .*:\([0-9]*\)$/\1/p' "$out")
        if [[ -n $proxy_port ]]; then return; fi
        if ! kill -0 "$proxy_pid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "des-latency-proxy in front of port $upstream did not start:" >&2
    cat "$work/proxy-$upstream.log" >&2
    return 1
}

# proxy_garage [DELAY [RATE]]: one proxy in front of Garage's S3 API, one in
# front of its web port. Sets s3_proxy_port, web_proxy_port and s3_via_proxy
# (an AWS_ENDPOINT_URL through the proxy).
# shellcheck disable=SC2034
proxy_garage() {
    start_latency_proxy "$garage_s3_port" "$@"
    s3_proxy_port=$proxy_port
    s3_via_proxy=http://127.0.0.1:$s3_proxy_port
    start_latency_proxy "$garage_web_port" "$@"
    web_proxy_port=$proxy_port
}

# curl_times N URL [CURL ARGS...]: N GETs of URL, each on a new connection
# (curl's time_total, ms); prints "min median max" and fails on any error.
curl_times() {
    local n=$1 url=$2
    shift 2
    for _ in $(seq 1 "$n"); do
        curl -sSf -o /dev/null -w '%{time_total}\n' "$@" "$url" || return 1
    done | python3 -c '
import statistics, sys
t = sorted(float(x) * 1000 for x in sys.stdin)
print(f"{t[0]:.1f} {statistics.median(t):.1f} {t[-1]:.1f}")'
}

# The self-test (run, not sourced).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    if [[ ${1:-} != selftest ]]; then
        sed -n '2,25p' "$0" >&2
        exit 2
    fi
    root=$(cd "$(dirname "$0")/.." && pwd)
    # shellcheck source=bench/lib.sh
    source "$root/bench/lib.sh"
    work=$(mktemp -d /tmp/des-proxy-lib.XXXXXX)
    name=proxy-lib-selftest-$$
    pids=()
    cleanup() {
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        "$root/scripts/garage.sh" purge "$name" 2>/dev/null || true
        rm -rf "$work"
    }
    trap cleanup EXIT
    DES_RETRIEVER=${DES_RETRIEVER:-none} DES_PACK=${DES_PACK:-none} build_bins "$root" -p des-bench-tools
    DELAY=${DELAY:-10ms}
    garage_up "$name"
    garage_website des
    head -c 100000 /dev/urandom >"$work/a.bin"
    s3_put "$work/a.bin" loose/a.bin
    proxy_garage "$DELAY" "${RATE:-}"
    url=http://127.0.0.1:$web_proxy_port/loose/a.bin
    curl -sSf -H "Host: $garage_web_host" "$url" -o "$work/back"
    cmp "$work/a.bin" "$work/back"
    echo "web GET through the proxy is byte-identical" >&2
    direct=$(curl_times 10 "http://127.0.0.1:$garage_web_port/loose/a.bin" -H "Host: $garage_web_host")
    proxied=$(curl_times 10 "$url" -H "Host: $garage_web_host")
    s3=$(curl_times 10 "$s3_via_proxy/des/loose/a.bin" --aws-sigv4 "aws:amz:garage:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
    echo "GET of a 100 kB loose object, ms per request on a new connection (min median max):"
    echo "  direct from Garage's web port:         $direct"
    echo "  through the web proxy (DELAY=$DELAY):  $proxied"
    echo "  signed S3 GET through the S3 proxy:    $s3"
    floor=$(python3 -c "import sys; print(2 * float(sys.argv[1].removesuffix('ms')))" "$DELAY")
    # A new connection: SYN/SYN-ACK are local (the proxy accepts at once),
    # then request and answer each cross the delay once: at least 2 x DELAY.
    for t in "$proxied" "$s3"; do
        python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)" \
            "${t%% *}" "$floor" || { echo "FAIL: fastest GET ${t%% *} ms < $floor ms" >&2; exit 1; }
    done
    echo "PASS: every GET through a proxy took at least 2 x $DELAY"
fi
