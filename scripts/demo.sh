#!/usr/bin/env bash
# The main job end to end on the default local-directory store:
# pack a sample directory, serve the store with des-retriever, fetch files
# back over HTTP and compare them byte for byte with the originals.
#
#   scripts/demo.sh [SAMPLE_DIR]
#
# SAMPLE_DIR defaults to this repository's format-spec/ folder (always
# present); the Rust documentation set works too:
#   scripts/demo.sh "$(rustc --print sysroot)/share/doc/rust/html"
set -euo pipefail
cd "$(dirname "$0")/.."

sample=${1:-format-spec}
created_at=2024-05-17T10:00:00Z
work=$(mktemp -d "${TMPDIR:-/tmp}/des-demo.XXXXXX")
port=${DES_DEMO_PORT:-18080}
server=

cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== building des-pack and des-retriever"
cargo build --locked --release -q -p des-packer -p des-retriever
bin=target/release

echo "== packing $sample into $work/store"
"$bin/des-pack" --dir "$sample" --created-at "$created_at" --out "$work/store" \
    --report "$work/report.json" -q

echo "== serving it on 127.0.0.1:$port"
"$bin/des-retriever" --store "$work/store" --listen "127.0.0.1:$port" --no-auth \
    >"$work/retriever.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "== fetching files back"
checked=0
while IFS= read -r -d '' file; do
    uid=${file#"$sample"/}
    # uids are paths: escape what a URL path cannot hold as-is.
    enc=$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$uid")
    curl -fsS "http://127.0.0.1:$port/files/$enc?created_at=$created_at" -o "$work/got"
    cmp -s "$file" "$work/got" || { echo "MISMATCH: $uid" >&2; exit 1; }
    checked=$((checked + 1))
    [[ $checked -ge 20 ]] && break
done < <(find "$sample" -type f ! -name '.*' -print0 | sort -z)

first=$(find "$sample" -type f ! -name '.*' | sort | head -1)
uid=${first#"$sample"/}
echo "   e.g. curl 'http://127.0.0.1:$port/files/$uid?created_at=$created_at'"
curl -sS -D - -o /dev/null "http://127.0.0.1:$port/files/$uid?created_at=$created_at" | sed 's/^/   /'
echo "OK: $checked files fetched over HTTP, byte-identical to $sample"
