# shellcheck shell=bash
# Shared by the retrieval benchmarks (source it; it defines functions only).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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
