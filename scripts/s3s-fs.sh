#!/usr/bin/env bash
# s3s-fs (the s3s project's file-backed S3 server) for the S3 conformance tests.
#
#   scripts/s3s-fs.sh install   cargo install s3s-fs 0.14.1 unless already there
#
# des_storage::testing::S3Server::s3s_fs() starts and stops it for the tests.
set -euo pipefail

VERSION=0.14.1

bin=${S3S_FS_BIN:-$(command -v s3s-fs 2>/dev/null || echo "$HOME/.cargo/bin/s3s-fs")}

installed() {
    [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -q "$VERSION"
}

case ${1:-} in
    install)
        if installed; then
            echo "s3s-fs $VERSION already installed: $bin" >&2
            exit 0
        fi
        if pgrep -f "cargo install --locked s3s-fs" >/dev/null; then
            echo "waiting for the running 'cargo install s3s-fs'..." >&2
            while pgrep -f "cargo install --locked s3s-fs" >/dev/null; do sleep 10; done
            if installed; then exit 0; fi
        fi
        cargo install --locked "s3s-fs@$VERSION" --features binary
        ;;
    *)
        sed -n '2,6p' "$0" >&2
        exit 2
        ;;
esac
