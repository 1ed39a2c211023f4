#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, each only when
# missing, so a second run costs seconds:
#   - Garage 2.5.0 and s3s-fs 0.14.1 (real S3 servers for the S3 tests;
#     the first build of Garage takes ~15-25 min on 2 cores),
#   - promtool (Debian's `prometheus` package) to check /metrics output
#     and alert rules,
#   - a Pushgateway (Debian's `prometheus-pushgateway`) for the batch tools'
#     --pushgateway tests (repack/tests/pushgateway.rs),
#   - PostgreSQL (Debian's `postgresql`) and openssl for des-migrate's tests,
#     which start throwaway clusters with its initdb/pg_ctl and make TLS
#     certificates with openssl (migrate/tests/common).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true

apt_install() {
    local sudo=
    [[ $(id -u) -ne 0 ]] && sudo=sudo
    # Only refresh the package lists when a first attempt cannot find the package.
    $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 || {
        $sudo apt-get update -q >/dev/null
        $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null
    }
}

if ! command -v promtool >/dev/null; then
    echo "== installing promtool (apt: prometheus)" >&2
    apt_install prometheus
    # The package starts a Prometheus server on installation; tests need only the tool.
    (service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
fi

if [[ ! -x /usr/bin/prometheus-pushgateway ]]; then
    echo "== installing the Pushgateway (apt: prometheus-pushgateway)" >&2
    apt_install prometheus-pushgateway
    # The package may start the service (port 9091); the tests start their own.
    service prometheus-pushgateway stop >/dev/null 2>&1 || true
fi

if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || ! command -v openssl >/dev/null; then
    echo "== installing PostgreSQL (apt: postgresql, openssl)" >&2
    apt_install postgresql openssl
    # The package creates and starts a cluster of its own (port 5432); the
    # tests start theirs, on free ports.
    service postgresql stop >/dev/null 2>&1 || true
fi

# Both builds at once would fight over 2 cores; one after the other is faster overall.
scripts/garage.sh install
scripts/s3s-fs.sh install
