#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, the whole test suite (unit,
# property, end-to-end, and the S3 tests against real Garage and s3s-fs
# servers, which the tests start and stop themselves), and the deployment
# manifests' validation. Installs what it needs first (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --all-features --locked

if [[ -x scripts/validate-deploy.sh ]]; then
    echo "== deployment manifests"
    scripts/validate-deploy.sh
fi
