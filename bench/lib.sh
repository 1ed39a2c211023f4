# shellcheck shell=bash
# Shared by the retrieval benchmarks (source it; it defines functions only).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# build_bins ROOT [CARGO ARGS...]: release-builds des-retriever and des-pack
# plus any extra targets; sets $bin (the target dir's release/), $retriever_bin
# and $pack_bin. DES_RETRIEVER / DES_PACK name prebuilt binaries to use
# instead (A/B runs of two builds, or while the other crate is being changed).
# shellcheck disable=SC2034 # these are for the sourcing script
build_bins() {
    local root=$1
    shift
    echo "building (release)..." >&2
    bin="${CARGO_TARGET_DIR:-$root/target}/release"
    local packages=()
    [[ -n ${DES_RETRIEVER:-} ]] || packages+=(-p des-retriever)
    [[ -n ${DES_PACK:-} ]] || packages+=(-p des-packer)
    if ((${#packages[@]})); then
        cargo build --release -q --manifest-path "$root/Cargo.toml" "${packages[@]}" --bins "$@"
    elif (($#)); then
        cargo build --release -q --manifest-path "$root/Cargo.toml" "$@"
    fi
    retriever_bin=${DES_RETRIEVER:-$bin/des-retriever}
    pack_bin=${DES_PACK:-$bin/des-pack}
}

wait_port() { # port
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    exit 1
}

# write_files DIR N MIN_SIZE MAX_SIZE: N files over 100 directories, fixed
# seed, half text-like (compressible) and half random bytes, so every
# benchmark that uses it serves the same mix.
write_files() {
    python3 - "$@" <<'PY'
import os, random, sys
out, n, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(42)
for i in range(n):
    d = os.path.join(out, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    size = rng.randint(lo, hi)
    data = (b"lorem ipsum dolor sit amet %d\n" % i) * (size // 28 + 1) if i % 2 else rng.randbytes(size)
    with open(os.path.join(d, f"f{i}.bin"), "wb") as f:
        f.write(data[:size])
PY
}

# cpu_ticks PID: user + system clock ticks the process has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# start_nginx WORK NAME WORKERS HTTP_DIRECTIVES: runs nginx in the
# background (its pid is then $!) with its files under WORK/NAME*, errors
# only in WORK/NAME-error.log, no access log, and HTTP_DIRECTIVES (servers,
# upstreams, options) inside http {}.
start_nginx() {
    local work=$1 name=$2 workers=$3 directives=$4
    mkdir -p "$work/$name-tmp"
    cat > "$work/$name.conf" <<NGINX
worker_processes $workers;
daemon off;
pid $work/$name.pid;
error_log $work/$name-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/$name-tmp;
    proxy_temp_path $work/$name-tmp;
    fastcgi_temp_path $work/$name-tmp;
    uwsgi_temp_path $work/$name-tmp;
    scgi_temp_path $work/$name-tmp;
$directives
}
NGINX
    nginx -c "$work/$name.conf" -p "$work" &
}

# ratios RESULTS NAME BASE...: RESULTS holds lines "round R SERVER rps=X ...
# [cpu_us_per_req=Y ...]"; prints NAME's req/s over each BASE's, round by
# round and their median, then each server's median CPU µs per request.
ratios() {
    python3 - "$@" <<'PY'
import statistics, sys
path, name, *bases = sys.argv[1:]
rps, cpu = {}, {}
for line in open(path):
    _, rnd, server, *fields = line.split()
    kv = dict(f.split("=", 1) for f in fields if "=" in f)
    rps.setdefault(server, {})[rnd] = float(kv["rps"])
    if "cpu_us_per_req" in kv:
        cpu.setdefault(server, []).append(float(kv["cpu_us_per_req"]))
for base in bases:
    rs = [rps[name][k] / rps[base][k] for k in rps.get(name, {}) if rps[base].get(k)]
    if rs:
        print(f"ratio {name}/{base}: median {statistics.median(rs):.2f} "
              f"(rounds: {', '.join(f'{x:.2f}' for x in rs)})")
for server, us in cpu.items():
    print(f"cpu_us_per_req {server}: median {statistics.median(us):.1f} (rounds: {', '.join(f'{x:.1f}' for x in us)})")
PY
}

# loadgen_result NAME BASE PATHS SECONDS [VERIFY [RATE [HOST]]]: one run of
# des-loadgen ($loadgen_bin, pinned to LOADGEN_CPU, default 1) as a RESULT-style
# line "NAME rps=… p50_ms=… p99_ms=… errors=0". Closed loop over CONNECTIONS
# connections, or open loop at RATE requests/s. VERIFY (PATH<TAB>FILE lines)
# checks those answers byte for byte; any non-2xx, error or mismatch ends
# the script, so no figure comes from a run that served wrong answers.
loadgen_result() {
    local name=$1 base=$2 paths=$3 secs=$4 verify=${5:-} rate=${6:-} host=${7:-} out rc=0
    local args=(--base "$base" --paths "$paths" --duration "${secs}s" --connections "${CONNECTIONS:-32}" --json)
    if [[ -n $verify ]]; then args+=(--verify "$verify"); fi
    if [[ -n $rate ]]; then args+=(--rate "$rate" --warmup 1s); fi
    if [[ -n $host ]]; then args+=(--host "$host"); fi
    out=$(taskset -c "${LOADGEN_CPU:-1}" "${loadgen_bin:?build des-bench-tools first}" "${args[@]}" \
        2>"${work:?}/loadgen-$name.err") || rc=$?
    if ((rc != 0)); then
        echo "des-loadgen run $name failed (exit $rc): non-2xx, error or wrong bytes" >&2
        cat "$work/loadgen-$name.err" >&2
        exit 1
    fi
    python3 - "$name" "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(f"{sys.argv[1]} rps={r['rps']:.0f} p50_ms={r['p50_us'] / 1000:.2f} "
      f"p99_ms={r['p99_us'] / 1000:.2f} errors={r['errors']} verified={r['verified']}")
PY
}
