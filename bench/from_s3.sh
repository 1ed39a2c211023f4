#!/usr/bin/env bash
# Packing loose S3 objects: `des-pack --from-s3` against a recursive copy of
# the same objects by the AWS CLI, in the same run, on one Garage node on
# loopback (started and removed by this script).
#
#   bench/from_s3.sh                          # 10,000 objects of 1-16 KiB
#   FILES=50000 MIN_SIZE=512 MAX_SIZE=4096 bench/from_s3.sh
#   DES_PACK=/path/to/des-pack bench/from_s3.sh   # a prebuilt binary
#   JOBS=8 bench/from_s3.sh                   # des-pack --jobs (default 4, its default)
#
# Measured, each on the same N objects under s3://des/loose/:
#   aws-cp-s3     aws s3 cp --recursive s3://des/loose/ s3://des/copy/  (server-side copies)
#   aws-cp-local  aws s3 cp --recursive s3://des/loose/ LOCAL_DIR       (every object read)
#   des-pack      des-pack --from-s3 s3://des/loose --out s3://des/store (every object read,
#                 packed into 256 shards, published and fsynced by Garage)
#   des-pack+del  des-pack --from-s3 --delete-sources-after-verify on a second upload
#                 (s3://des/loose2/) into a second store: pack, read back, verify, delete
# and prints objects/s, MB/s (of object bytes) and each one's ratio to aws-cp-s3.
# The AWS CLI runs with its defaults (10 concurrent requests); if `aws` is not on
# PATH it is installed from PyPI into a venv under target/bench-awscli.
#
# Needs: cargo, python3, curl, openssl, garage (scripts/garage.sh install).
set -euo pipefail

FILES=${FILES:-10000}
MIN_SIZE=${MIN_SIZE:-1024}
MAX_SIZE=${MAX_SIZE:-16384}
JOBS=${JOBS:-4}

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
work=$(mktemp -d /tmp/des-bench-from-s3.XXXXXX)
garage_name=bench-from-s3-$$
cleanup() {
    "$root/scripts/garage.sh" purge "$garage_name" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if [[ -z ${DES_PACK:-} ]]; then
    echo "building des-pack (release)..." >&2
    cargo build --release -q --manifest-path "$root/Cargo.toml" -p des-packer --bin des-pack
fi
pack=${DES_PACK:-${CARGO_TARGET_DIR:-$root/target}/release/des-pack}

if command -v aws >/dev/null; then
    aws=$(command -v aws)
else
    venv=${CARGO_TARGET_DIR:-$root/target}/bench-awscli
    if [[ ! -x $venv/bin/aws ]]; then
        echo "installing the AWS CLI into $venv..." >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q awscli
    fi
    aws=$venv/bin/aws
fi

eval "$("$root/scripts/garage.sh" start "$garage_name")"
# Path-style addressing, and checksums only where S3 requires them (as
# des-storage does): recent botocore otherwise sends CRC trailers by default.
cat >"$work/aws.conf" <<EOF
[default]
region = $AWS_REGION
s3 =
    addressing_style = path
request_checksum_calculation = when_required
response_checksum_validation = when_required
EOF
export AWS_CONFIG_FILE=$work/aws.conf AWS_SHARED_CREDENTIALS_FILE=/nonexistent
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE DES_STORE
bucket=$DES_S3_BUCKET

echo "writing $FILES files of $MIN_SIZE-$MAX_SIZE bytes..." >&2
write_files "$work/files" "$FILES" "$MIN_SIZE" "$MAX_SIZE"
bytes=$(find "$work/files" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f", s}')
for prefix in loose loose2; do
    echo "uploading them to s3://$bucket/$prefix/ (aws s3 cp)..." >&2
    "$aws" s3 cp --recursive --only-show-errors "$work/files" "s3://$bucket/$prefix/"
done
listed=$("$aws" s3 ls --recursive "s3://$bucket/loose/" | wc -l)
[[ $listed == "$FILES" ]] || { echo "uploaded $listed of $FILES objects" >&2; exit 1; }

declare -A secs
# name command...: wall-clock seconds of one run; its output goes to $work/NAME.out/.err
measure() {
    local name=$1
    shift
    local start end
    start=$(date +%s.%N)
    "$@" >"$work/$name.out" 2>"$work/$name.err" || {
        echo "$name failed:" >&2
        tail -20 "$work/$name.err" >&2
        exit 1
    }
    end=$(date +%s.%N)
    secs[$name]=$(python3 -c "print(f'{$end - $start:.3f}')")
}

measure aws-cp-s3 "$aws" s3 cp --recursive --only-show-errors "s3://$bucket/loose/" "s3://$bucket/copy/"
measure aws-cp-local "$aws" s3 cp --recursive --only-show-errors "s3://$bucket/loose/" "$work/download"
measure des-pack "$pack" --from-s3 "s3://$bucket/loose" --out "s3://$bucket/store" \
    --jobs "$JOBS" --json
measure des-pack+del "$pack" --from-s3 "s3://$bucket/loose2" --out "s3://$bucket/store2" \
    --jobs "$JOBS" --delete-sources-after-verify --json

# Every run must have handled every object.
python3 - "$work" "$FILES" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
for name, deleted in (("des-pack", 0), ("des-pack+del", n)):
    r = json.load(open(f"{work}/{name}.out"))
    s = r["from_s3"]
    ok = (r["files_packed"] == n and r["files_failed"] == 0
          and s["objects_listed"] == n and s["sources_deleted"] == deleted)
    if not ok:
        sys.exit(f"{name}: unexpected report: packed {r['files_packed']}, failed "
                 f"{r['files_failed']}, listed {s['objects_listed']}, deleted {s['sources_deleted']}")
PY
copied=$("$aws" s3 ls --recursive "s3://$bucket/copy/" | wc -l)
downloaded=$(find "$work/download" -type f | wc -l)
left=$("$aws" s3 ls --recursive "s3://$bucket/loose2/" | wc -l || true)
[[ $copied == "$FILES" && $downloaded == "$FILES" && $left == 0 ]] || {
    echo "copied $copied, downloaded $downloaded, left in loose2 $left (want $FILES, $FILES, 0)" >&2
    exit 1
}

echo "objects: $FILES, $bytes bytes ($MIN_SIZE-$MAX_SIZE each); $(nproc) cores; Garage $("$(command -v garage || echo "$HOME/.cargo/bin/garage")" --version 2>/dev/null | head -1); $("$aws" --version 2>&1 | head -1)"
printf '%-14s %9s %10s %8s %14s\n' run seconds objects/s MB/s vs_aws-cp-s3
for name in aws-cp-s3 aws-cp-local des-pack des-pack+del; do
    python3 - "$name" "${secs[$name]}" "$FILES" "$bytes" "${secs[aws-cp-s3]}" <<'PY'
import sys
name, s, n, b, base = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
print(f"{name:<14} {s:9.2f} {n / s:10.0f} {b / s / 1e6:8.2f} {base / s:13.2f}x")
PY
done
