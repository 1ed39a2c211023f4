# shellcheck shell=bash
# Shared by the retrieval benchmarks (source it; it defines functions only).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# build_bins ROOT [CARGO ARGS...]: release-builds des-retriever and des-pack (or
# only des-retriever when DES_PACK names a des-pack binary, e.g. while the
# packer is being changed) plus any extra targets; sets $bin and $pack_bin.
# shellcheck disable=SC2034 # bin and pack_bin are for the sourcing script
build_bins() {
    local root=$1
    shift
    echo "building (release)..." >&2
    bin="${CARGO_TARGET_DIR:-$root/target}/release"
    if [[ -n ${DES_PACK:-} ]]; then
        cargo build --release -q --manifest-path "$root/Cargo.toml" -p des-retriever --bins "$@"
        pack_bin=$DES_PACK
    else
        cargo build --release -q --manifest-path "$root/Cargo.toml" -p des-retriever -p des-packer --bins "$@"
        pack_bin=$bin/des-pack
    fi
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
