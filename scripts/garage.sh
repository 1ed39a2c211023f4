#!/usr/bin/env bash
# Garage (S3-compatible server) for tests and manual use.
#
#   scripts/garage.sh install        cargo install garage 2.5.0 unless already there
#   scripts/garage.sh start [NAME]   start a single-node instance, print `export` lines
#   scripts/garage.sh env [NAME]     print the `export` lines of a running instance
#   scripts/garage.sh stop [NAME]    stop it, keeping its data for the next start
#   scripts/garage.sh purge [NAME]   stop it and delete its data
#
# Typical use:  eval "$(scripts/garage.sh start)"; des-pack --out "s3://$DES_S3_BUCKET/demo" ...
# Several instances can run side by side under different NAMEs (default "default").
# State lives in $DES_GARAGE_STATE (default /tmp/des-garage)/NAME.
# The Rust tests do not use this: des_storage::testing starts its own servers.
# GARAGE_BLOCK_SIZE (default 1M, Garage's default) and GARAGE_COMPRESSION (default 1;
# "\"none\"" turns it off) set the data block size and zstd level of a new instance,
# to measure their effect on small range reads of shard objects (docs/BENCHMARKS.md
# §3: between 1 MiB and 256 KiB, with or without compression, it was small).
set -euo pipefail

VERSION=2.5.0
STATE_ROOT=${DES_GARAGE_STATE:-/tmp/des-garage}
BUCKET=des

garage_bin() {
    if [[ -n ${GARAGE_BIN:-} ]]; then echo "$GARAGE_BIN"; return; fi
    command -v garage 2>/dev/null || echo "$HOME/.cargo/bin/garage"
}

installed() {
    local bin
    bin=$(garage_bin)
    [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -q "$VERSION"
}

install() {
    if installed; then
        echo "garage $VERSION already installed: $(garage_bin)" >&2
        return
    fi
    # A build started elsewhere (another shell, CI setup) finishes sooner than a second one.
    if pgrep -f "cargo install --locked garage" >/dev/null; then
        echo "waiting for the running 'cargo install garage'..." >&2
        while pgrep -f "cargo install --locked garage" >/dev/null; do sleep 10; done
        if installed; then return; fi
    fi
    echo "building garage $VERSION (slow: about 25 min on 2 cores)..." >&2
    cargo install --locked "garage@$VERSION"
}

free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        # Nothing listening: connecting fails.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

running() {
    local dir=$1
    [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null
}

print_env() {
    local dir=$1
    # shellcheck disable=SC1091
    source "$dir/settings"
    cat <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=garage
export DES_S3_FORCE_PATH_STYLE=1
export DES_S3_BUCKET=$BUCKET
EOF
}

start() {
    local name=$1 dir=$STATE_ROOT/$1
    if running "$dir"; then
        print_env "$dir"
        return
    fi
    installed || { echo "garage $VERSION not found: run scripts/garage.sh install" >&2; exit 1; }
    mkdir -p "$dir"
    if [[ ! -f $dir/settings ]]; then
        # Ports and keys are chosen once per instance, so a restart finds its data.
        cat >"$dir/settings" <<EOF
S3_PORT=$(free_port)
RPC_PORT=$(free_port)
ADMIN_PORT=$(free_port)
ACCESS_KEY=GK$(openssl rand -hex 12)
SECRET_KEY=$(openssl rand -hex 32)
RPC_SECRET=$(openssl rand -hex 32)
ADMIN_TOKEN=$(openssl rand -hex 16)
EOF
    fi
    # The web endpoint came later: instances made before get a port now.
    grep -q '^WEB_PORT=' "$dir/settings" || echo "WEB_PORT=$(free_port)" >>"$dir/settings"
    # shellcheck disable=SC1091
    source "$dir/settings"
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
block_size = "${GARAGE_BLOCK_SIZE:-1M}"
compression_level = ${GARAGE_COMPRESSION:-1}
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$RPC_SECRET"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"

# Anonymous plain GETs of a bucket's objects once it is made a website
# (garage bucket website --allow BUCKET), with "Host: BUCKET.web.garage":
# bench/proxy_lib.sh measures a direct GET of a loose object with it.
[s3_web]
bind_addr = "127.0.0.1:$WEB_PORT"
root_domain = ".web.garage"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
admin_token = "$ADMIN_TOKEN"
EOF
    # --single-node assigns the layout; --default-bucket creates key and bucket.
    GARAGE_DEFAULT_ACCESS_KEY=$ACCESS_KEY GARAGE_DEFAULT_SECRET_KEY=$SECRET_KEY \
        GARAGE_DEFAULT_BUCKET=$BUCKET \
        nohup "$(garage_bin)" -c "$dir/garage.toml" server --single-node --default-bucket \
        >>"$dir/garage.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    for _ in $(seq 1 300); do
        if curl -fs -o /dev/null "http://127.0.0.1:$ADMIN_PORT/health"; then
            echo "garage '$name' ready on http://127.0.0.1:$S3_PORT (log: $dir/garage.log)" >&2
            print_env "$dir"
            return
        fi
        if ! running "$dir"; then break; fi
        sleep 0.1
    done
    echo "garage '$name' failed to start; last log lines:" >&2
    tail -20 "$dir/garage.log" >&2
    stop "$name"
    exit 1
}

stop() {
    local name=$1 dir=$STATE_ROOT/$1
    if running "$dir"; then
        local pid
        pid=$(cat "$dir/pid")
        kill "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        echo "garage '$name' stopped" >&2
    fi
    rm -f "$dir/pid"
}

cmd=${1:-}
name=${2:-default}
case $cmd in
    install) install ;;
    start) start "$name" ;;
    env)
        running "$STATE_ROOT/$name" || { echo "garage '$name' is not running" >&2; exit 1; }
        print_env "$STATE_ROOT/$name"
        ;;
    stop) stop "$name" ;;
    purge)
        stop "$name"
        rm -rf "${STATE_ROOT:?}/$name"
        ;;
    *)
        sed -n '2,13p' "$0" >&2
        exit 2
        ;;
esac
