#!/usr/bin/env python3
"""Writes N files with log-normal sizes clipped to 1..64 KiB, fixed seed.

    bench/gen_synthetic.py OUT_DIR [N] [SEED]

Contents mix compressible text-like lines with random bytes (about a third
of the files are incompressible, like scans), so compression ratios are
neither trivial nor hopeless. Same N and SEED give the same bytes.
Files are spread over 1000 directories, as a business system would.
"""
import os
import random
import sys

KIB = 1024


def main() -> None:
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 42
    rng = random.Random(seed)
    words = [bytes(f"w{i:04d} ", "ascii") for i in range(2000)]
    noise = rng.randbytes(4 * 64 * KIB)
    total = 0
    for i in range(n):
        # median ~6 KiB, long tail up to 64 KiB
        size = int(min(64 * KIB, max(1 * KIB, rng.lognormvariate(8.7, 0.9))))
        if i % 3 == 0:
            start = rng.randrange(len(noise) - size)
            data = noise[start:start + size]
        else:
            parts = []
            length = 0
            while length < size:
                line = b"".join(rng.choices(words, k=12)) + b"\n"
                parts.append(line)
                length += len(line)
            data = b"".join(parts)[:size]
        d = os.path.join(out, f"d{i % 1000:03d}")
        if i < 1000:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.dat"), "wb") as f:
            f.write(data)
        total += size
    print(f"{n} files, {total} bytes in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
