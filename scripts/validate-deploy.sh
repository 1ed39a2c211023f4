#!/usr/bin/env bash
# Validates everything under deployment: Dockerfile, docker-compose.yml, k8s/,
# deploy/ (Prometheus config and alerts, Grafana dashboard), and that every
# metric the dashboard and the alerts use is exported by the binaries.
#
#   scripts/validate-deploy.sh                 # every check; exit 1 if any fails
#   scripts/validate-deploy.sh --skip metrics  # all but one step (repeatable)
#   scripts/validate-deploy.sh --only k8s      # one step (repeatable)
#
# Steps: tools dockerfile compose prometheus grafana k8s garage config metrics manifests docs
#
# Installs what it needs when missing, so a second run is fast:
#   - a virtualenv with deploy/tools/requirements.txt (hadolint, kubernetes-validate,
#     jsonschema, PyYAML) in $DES_TOOLS_DIR (default ~/.cache/des-deploy-tools),
#     rebuilt only when that file changes;
#   - promtool (Debian package `prometheus`) and shellcheck through apt;
#   - the Compose Specification schema from the npm package dclint (its
#     schemas/compose.schema.json, a copy of compose-spec/schema/compose-spec.json),
#     fetched once with `npm pack` and checked against a pinned SHA-256.
# Kustomize is the one built into kubectl (on every machine image here).
#
# The config step checks that every key of k8s/*/retriever.toml is a setting of
# the built des-retriever (its --help). The metrics step builds the binaries (cargo, debug), packs
# deploy/sample into a temporary store, starts des-retriever on 127.0.0.1,
# makes a few requests, scrapes /metrics, runs des-verify and des-repack (when
# built) with DES_METRICS_FILE, and compares the names. $DES_BIN_DIR selects
# prebuilt binaries instead (for every step that runs them). Work files: target/validate-deploy/.
#
# The manifests step builds the release binaries the image holds (the Dockerfile's
# `cargo build --release --bin ...`) and runs every DES container of every
# kustomization (base, overlays) and of docker-compose.yml with its exact command,
# args and environment against them (deploy/tools/run_manifests.py: S3 on a Garage
# started for the check, set up by deploy/garage/setup.py; the overrides it needs
# are printed): jobs must exit 0, services pass their probes or healthcheck and
# exit 0 on SIGTERM, and nothing may need a shell (the image has none). It needs
# the garage binary (scripts/deps.sh installs it; or $GARAGE_BIN).
# The docs step checks that every DES_* variable, des-retriever config key and
# option the docs and manifests name is read by the binaries, and that every
# des-retriever option is documented (deploy/tools/check_docs_settings.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ALL_STEPS=(tools dockerfile compose prometheus grafana k8s garage config metrics manifests docs)
TOOLS_DIR=${DES_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/des-deploy-tools}
WORK=$ROOT/target/validate-deploy
# Kubernetes versions the manifests must be valid for (schemas bundled in kubernetes-validate).
K8S_VERSIONS=${DES_K8S_VERSIONS:-"1.30.0 1.37.0"}
DCLINT_VERSION=3.1.0
COMPOSE_SCHEMA_SHA256=46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

declare -A selected=()
only=0
while (($#)); do
    case $1 in
        --only) [[ $# -ge 2 ]] || usage; ((only)) || selected=(); only=1; selected[$2]=1; shift 2 ;;
        --skip) [[ $# -ge 2 ]] || usage; selected[$2]=skip; shift 2 ;;
        -h | --help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
for s in "${!selected[@]}"; do
    [[ " ${ALL_STEPS[*]} " == *" $s "* ]] || { echo "unknown step: $s" >&2; usage; }
done
wanted() {
    if ((only)); then [[ ${selected[$1]:-} == 1 ]]; else [[ ${selected[$1]:-} != skip ]]; fi
}

failed=()
passed=()
# Each step runs in a subshell with errexit on (a condition context such as
# `if step_fn` would silently turn errexit off inside the function).
step() {
    local name=$1 rc
    shift
    wanted "$name" || return 0
    echo "== $name"
    set +e
    (set -e; "$@")
    rc=$?
    set -e
    if ((rc == 0)); then
        passed+=("$name")
    else
        echo "!! $name FAILED" >&2
        failed+=("$name")
    fi
}

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    ((${#missing[@]})) || return 0
    echo "installing with apt: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---- tools -------------------------------------------------------------------
REQUIREMENTS=$ROOT/deploy/tools/requirements.txt
VENV=$TOOLS_DIR/venv-$(sha256sum "$REQUIREMENTS" | cut -c1-16)
COMPOSE_SCHEMA=$TOOLS_DIR/dclint-$DCLINT_VERSION/package/schemas/compose.schema.json

tools() {
    local req=$REQUIREMENTS
    if [[ ! -f $VENV/.complete ]]; then
        echo "creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
        touch "$VENV/.complete"
    fi
    apt_install promtool:prometheus shellcheck:shellcheck
    command -v kubectl >/dev/null || {
        echo "kubectl (with its built-in kustomize) not found; it ships with the machine image" >&2
        return 1
    }

    if [[ ! -f $COMPOSE_SCHEMA ]]; then
        local dir=$TOOLS_DIR/dclint-$DCLINT_VERSION
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" && npm pack --silent "dclint@$DCLINT_VERSION" >/dev/null && tar xzf "dclint-$DCLINT_VERSION.tgz")
    fi
    echo "$COMPOSE_SCHEMA_SHA256  $COMPOSE_SCHEMA" | sha256sum --check --quiet || {
        echo "compose schema from dclint@$DCLINT_VERSION has an unexpected SHA-256" >&2
        return 1
    }

    echo "hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}')," \
        "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)," \
        "jsonschema $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("jsonschema"))')," \
        "$(promtool --version 2>&1 | head -1 | awk '{print "promtool", $3}')," \
        "kustomize $(kubectl version --client -o json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["kustomizeVersion"])')," \
        "shellcheck $(shellcheck --version | awk '/^version:/ {print $2}')," \
        "compose schema: dclint@$DCLINT_VERSION"
    shellcheck scripts/validate-deploy.sh
}

need_tools() {
    if [[ -f $VENV/.complete && -f $COMPOSE_SCHEMA ]] && command -v promtool shellcheck kubectl >/dev/null; then
        return 0
    fi
    tools >/dev/null
}

# ---- dockerfile --------------------------------------------------------------
dockerfile() {
    need_tools
    # Every rule, down to style level; no rule is ignored.
    "$VENV/bin/hadolint" --failure-threshold style Dockerfile
    echo "Dockerfile: hadolint clean"
}

# ---- compose -----------------------------------------------------------------
compose() {
    need_tools
    "$VENV/bin/python" deploy/tools/validate_compose.py "$COMPOSE_SCHEMA" docker-compose.yml
}

# ---- prometheus --------------------------------------------------------------
prometheus() {
    need_tools
    promtool check config deploy/prometheus/prometheus.yml
    promtool check rules deploy/prometheus/alerts.yml
    (cd deploy/prometheus && promtool test rules alerts.test.yml)
}

# ---- grafana -----------------------------------------------------------------
grafana() {
    need_tools
    "$VENV/bin/python" - deploy/grafana/des.json deploy/grafana/provisioning <<'EOF'
import json, pathlib, sys, yaml
dash = json.load(open(sys.argv[1]))
problems = []
ids = set()
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash["panels"]):
    if p["id"] in ids:
        problems.append(f"panel id {p['id']} used twice")
    ids.add(p["id"])
    if p["type"] != "row":
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {p['title']!r}: datasource is not ${{datasource}}")
        if not p.get("targets"):
            problems.append(f"panel {p['title']!r}: no queries")
for f in pathlib.Path(sys.argv[2]).rglob("*.yml"):
    yaml.safe_load(f.read_text())
if problems:
    sys.exit("grafana: " + "; ".join(problems))
print(f"grafana: {sys.argv[1]}: {len(ids)} panels, provisioning files parse")
EOF
}

# ---- k8s ---------------------------------------------------------------------
# The kustomizations rendered and checked: the base and every overlay.
k8s_dirs() {
    local dir
    for dir in k8s/base k8s/overlays/*/; do echo "${dir%/}"; done
}

k8s() {
    need_tools
    local out=$WORK/k8s rc=0 dir name v
    rm -rf "$out" && mkdir -p "$out"
    for dir in $(k8s_dirs); do
        name=$(echo "${dir#k8s/}" | tr / -)
        kubectl kustomize "$dir" >"$out/$name.yaml" || { rc=1; continue; }
        for v in $K8S_VERSIONS; do
            if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$out/$name.yaml"; then
                echo "k8s: $dir renders ($(grep -c '^kind:' "$out/$name.yaml") objects), valid for Kubernetes $v (strict)"
            else
                rc=1
            fi
        done
    done
    # A Job whose index picks its shards, with no shell: the expansion must be in args.
    grep -q -- "--shard-partition=\$(PARTITION_INDEX)/" "$out/overlays-example-backfill.yaml" || {
        echo "k8s: the backfill Job does not pass --shard-partition" >&2
        rc=1
    }
    return $rc
}

# ---- garage ------------------------------------------------------------------
garage() {
    need_tools
    "$VENV/bin/python" -c "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], \"exec\")" deploy/garage/setup.py
    "$VENV/bin/python" - deploy/garage/garage.toml <<'EOF'
import sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
for key in ("metadata_dir", "data_dir", "replication_factor", "rpc_bind_addr", "s3_api", "admin"):
    assert key in cfg, f"garage.toml: no {key}"
assert "rpc_secret" not in cfg and "admin_token" not in cfg.get("admin", {}), \
    "garage.toml: secrets belong in the environment (GARAGE_RPC_SECRET, GARAGE_ADMIN_TOKEN)"
print("garage: setup.py compiles, garage.toml has what a single node needs and no secrets")
EOF
}

# ---- binaries ----------------------------------------------------------------
BIN=
build_bins() {
    if [[ -n ${DES_BIN_DIR:-} ]]; then
        BIN=$DES_BIN_DIR
    else
        # Same features as `cargo test --workspace --all-features`, so CI reuses its build.
        cargo build --quiet --locked --workspace --all-features --bins
        BIN=$ROOT/target/debug
    fi
}

# ---- config ------------------------------------------------------------------
config() {
    need_tools
    build_bins
    mkdir -p "$WORK"
    "$BIN/des-retriever" --help >"$WORK/des-retriever.help"
    local f
    for f in k8s/base/config/retriever.toml k8s/overlays/*/retriever.toml; do
        [[ -f $f ]] || continue
        "$VENV/bin/python" - "$f" "$WORK/des-retriever.help" <<'EOF2'
import re, sys, tomllib
keys = set(tomllib.load(open(sys.argv[1], "rb")))
flags = {m.replace("-", "_") for m in re.findall(r"--([a-z][a-z0-9-]*)", open(sys.argv[2]).read())}
unknown = sorted(keys - flags)
if unknown:
    sys.exit(f"config: {sys.argv[1]}: not settings of des-retriever: {', '.join(unknown)}")
print(f"config: {sys.argv[1]}: every key is a des-retriever setting")
EOF2
    done
}

# ---- metrics -----------------------------------------------------------------
RETRIEVER_PID=
# Stops the des-retriever this script started (by its PID), if still running.
cleanup() {
    if [[ -n $RETRIEVER_PID ]]; then
        kill "$RETRIEVER_PID" 2>/dev/null || true
        wait "$RETRIEVER_PID" 2>/dev/null || true
    fi
}

metrics() {
    need_tools
    trap cleanup EXIT # this step runs in a subshell: its own trap stops the retriever
    local dir=$WORK/metrics bin port base uid=hello.txt at=2024-05-17T10:00:00Z
    rm -rf "$dir" && mkdir -p "$dir"
    build_bins
    bin=$BIN

    DES_METRICS_FILE=$dir/des-pack.prom "$bin/des-pack" --dir deploy/sample --created-at "$at" \
        --out "$dir/store" --quiet >"$dir/des-pack.log"

    port=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    base=http://127.0.0.1:$port
    DES_RETRIEVER_AUTH=off "$bin/des-retriever" --store "$dir/store" --listen "127.0.0.1:$port" \
        >"$dir/retriever.log" 2>&1 &
    RETRIEVER_PID=$!
    local ready=0
    for _ in $(seq 1 100); do
        if curl -fs -o /dev/null "$base/ready"; then ready=1; break; fi
        kill -0 "$RETRIEVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    if ((!ready)); then
        echo "metrics: des-retriever did not become ready; log:" >&2
        tail -20 "$dir/retriever.log" >&2
        return 1
    fi
    # Traffic, so that labelled series exist: hit, cached hit, HEAD, unknown uid, bad request, no route.
    curl -s -o /dev/null "$base/files/$uid?created_at=$at"
    curl -s -o /dev/null "$base/files/$uid?created_at=$at"
    curl -s -o /dev/null -I "$base/files/data/readings.json?created_at=$at"
    curl -s -o /dev/null "$base/files/no-such-file?created_at=$at"
    curl -s -o /dev/null "$base/files/$uid?created_at=yesterday"
    curl -s -o /dev/null "$base/nowhere"
    curl -s -o /dev/null "$base/health"
    local status
    status=$(curl -s -o "$dir/retriever.prom" -w '%{http_code}' "$base/metrics")
    cleanup
    RETRIEVER_PID=
    if [[ $status != 200 ]]; then
        echo "metrics: GET /metrics answered $status: des-retriever exports no metrics" >&2
        : >"$dir/retriever.prom"
    fi

    # Batch tools write their metrics where DES_METRICS_FILE says.
    local files=("$dir/retriever.prom") tool
    DES_METRICS_FILE=$dir/des-verify.prom "$bin/des-verify" --quiet "$dir/store" >"$dir/des-verify.log" 2>&1 ||
        echo "metrics: des-verify exited $? on a fresh store (log: $dir/des-verify.log)" >&2
    # des-tombstones exports nothing: the repacker reports the tombstone backlog.
    DES_METRICS_FILE=$dir/des-repack.prom DES_STORE=$dir/store timeout 120 "$bin/des-repack" \
        >"$dir/des-repack.log" 2>&1 ||
        echo "metrics: des-repack exited $? (log: $dir/des-repack.log)" >&2
    # A database that is not there: the run fails (exit 3) and still reports.
    local migrate_exit=0
    DES_METRICS_FILE=$dir/des-migrate.prom DES_STORE=$dir/store timeout 60 "$bin/des-migrate" \
        --database-url "postgresql://des@127.0.0.1:1/none" >"$dir/des-migrate.log" 2>&1 || migrate_exit=$?
    if ((migrate_exit != 3)); then
        echo "metrics: des-migrate without a database exited $migrate_exit, not 3 (log: $dir/des-migrate.log)" >&2
    fi
    for tool in des-pack des-verify des-repack des-migrate; do
        if [[ -f $dir/$tool.prom ]]; then
            files+=("$dir/$tool.prom")
        else
            echo "metrics: $tool wrote no metrics file (DES_METRICS_FILE)" >&2
        fi
    done

    "$VENV/bin/python" deploy/tools/check_metrics.py exported "$dir/exported-metrics.txt" "${files[@]}"
    "$VENV/bin/python" deploy/tools/check_metrics.py check "$dir/exported-metrics.txt" \
        deploy/grafana/des.json deploy/prometheus/alerts.yml
}

# ---- manifests ---------------------------------------------------------------
# The binaries of the image, built as the Dockerfile builds them (release).
RELEASE_BIN=
build_release_bins() {
    if [[ -n ${DES_BIN_DIR:-} ]]; then
        RELEASE_BIN=$DES_BIN_DIR
        return
    fi
    local bins=()
    read -r -a bins <<<"$(grep -o -- '--bin [A-Za-z0-9_-]*' Dockerfile | tr '\n' ' ')"
    ((${#bins[@]})) || { echo "manifests: no --bin in the Dockerfile's cargo build" >&2; return 1; }
    cargo build --quiet --release --locked "${bins[@]}"
    RELEASE_BIN=$ROOT/target/release
}

# Renders every kustomization into $1/<name>.yaml; K8S_ARGS: `--k8s DIR=FILE` for each.
K8S_ARGS=()
render_k8s() {
    local out=$1 dir name
    K8S_ARGS=()
    mkdir -p "$out"
    for dir in $(k8s_dirs); do
        name=$(echo "${dir#k8s/}" | tr / -)
        kubectl kustomize "$dir" >"$out/$name.yaml"
        K8S_ARGS+=(--k8s "$dir=$out/$name.yaml")
    done
}

manifests() {
    need_tools
    build_release_bins
    local out=$WORK/manifests
    rm -rf "$out" && mkdir -p "$out"
    render_k8s "$out/rendered"
    "$VENV/bin/python" deploy/tools/run_manifests.py --bin-dir "$RELEASE_BIN" --work "$out/runs" \
        --dockerfile Dockerfile --image-name des --sample deploy/sample \
        --garage-setup deploy/garage/setup.py "${K8S_ARGS[@]}" --compose docker-compose.yml
}

# ---- docs --------------------------------------------------------------------
docs() {
    need_tools
    build_bins
    local out=$WORK/docs bins=() b
    rm -rf "$out" && mkdir -p "$out"
    render_k8s "$out/rendered"
    while read -r _ b; do
        bins+=(--binary "$b")
    done < <(grep -o -- '--bin [A-Za-z0-9_-]*' Dockerfile)
    "$VENV/bin/python" deploy/tools/check_docs_settings.py --bin-dir "$BIN" "${bins[@]}" \
        "${K8S_ARGS[@]}"
}

step tools tools
step dockerfile dockerfile
step compose compose
step prometheus prometheus
step grafana grafana
step k8s k8s
step garage garage
step config config
step metrics metrics
step manifests manifests
step docs docs

echo
echo "passed: ${passed[*]:-none}"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
