#!/usr/bin/env python3
"""Hostile HTTP clients for bench/hostile.sh: slow readers and half-open requests.

    bench/hostile_clients.py --port PORT --big-paths FILE [options]

Two kinds of connection, kept open for --duration seconds (or until SIGTERM
or SIGINT), each re-opened --reopen-delay seconds after the server closes it:

  slow      GET a big file (every other one with `Range: bytes=0-` under
            --mode mix), read the status line and headers, then read the
            body ONE byte per --read-interval seconds. The socket's
            SO_RCVBUF is set (before connect) to --rcvbuf bytes so the
            kernel does not take megabytes off the server's hands.
  halfopen  send a partial request (request line, part of a header, no
            blank line) and then nothing (slowloris); count whatever the
            server answers (e.g. 408) and when it hangs up.

Per kind it counts: connection attempts, connections established, connect
errors, statuses of the responses seen (200/206/408/429/503/other), closes
by the server (EOF or reset), body bytes read. Once the first wave of
connections is up (or failed; at most --ramp-timeout seconds) it touches
--ready-file. At the end it prints one JSON object on stdout.
"""
import argparse
import asyncio
import json
import random
import signal
import socket
import sys
import time

STATUS_KEYS = ("200", "206", "408", "429", "503")


class Kind:
    def __init__(self, name):
        self.name = name
        self.attempts = 0
        self.established = 0
        self.connect_errors = 0
        self.statuses = {k: 0 for k in (*STATUS_KEYS, "other")}
        self.closed_by_server = 0
        self.reset_by_server = 0
        self.open_now = 0
        self.open_max = 0
        self.body_bytes = 0
        self.no_status = 0  # closed before a full status line + headers
        self.errors = {}  # other failures by type, e.g. {"TimeoutError": 2}

    def status(self, code):
        key = str(code)
        self.statuses[key if key in self.statuses else "other"] += 1

    def opened(self):
        self.established += 1
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)

    def summary(self):
        return {
            "attempts": self.attempts,
            "established": self.established,
            "connect_errors": self.connect_errors,
            "statuses": self.statuses,
            "no_status": self.no_status,
            "closed_by_server": self.closed_by_server,
            "reset_by_server": self.reset_by_server,
            "open_at_end": self.open_now,
            "open_max": self.open_max,
            "body_bytes": self.body_bytes,
            "errors": self.errors,
        }

    def error(self, e):
        name = type(e).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


class ServerClosed(Exception):
    pass


async def connect(loop, host, port, rcvbuf, timeout):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def recv(loop, sock, n, kind):
    """n bytes at most; ServerClosed on EOF or reset."""
    try:
        data = await loop.sock_recv(sock, n)
    except (ConnectionResetError, BrokenPipeError):
        kind.reset_by_server += 1
        raise ServerClosed from None
    if not data:
        kind.closed_by_server += 1
        raise ServerClosed
    return data


async def read_head(loop, sock, kind, limit=16384):
    """Reads until the end of the response headers; returns (status, extra body bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > limit:
            raise ValueError("response head too long")
        buf += await recv(loop, sock, 4096, kind)
    head, _, rest = buf.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0, rest


async def slow_reader(args, loop, kind, path, use_range, stop, first_wave):
    first = True
    while not stop.is_set():
        kind.attempts += 1
        try:
            sock = await connect(loop, args.host, args.port, args.rcvbuf, args.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            kind.connect_errors += 1
            kind.error(e)
            if first:
                first_wave.release()
                first = False
            await sleep_or_stop(stop, args.reopen_delay)
            continue
        kind.opened()
        try:
            req = f"GET {path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nUser-Agent: des-hostile-slow\r\n"
            if use_range:
                req += "Range: bytes=0-\r\n"
            await loop.sock_sendall(sock, (req + "\r\n").encode())
            try:
                head = await until_stop(read_head(loop, sock, kind), stop)
            except ServerClosed:
                kind.no_status += 1
                raise
            if head is None:
                continue  # stopped while waiting for the answer (finally closes)
            status, rest = head
            kind.status(status)
            kind.body_bytes += len(rest)
            if first:
                first_wave.release()
                first = False
            # Refused (429/503/...): hang up and come back, as a client retrying would.
            while status in (200, 206) and not stop.is_set():
                await sleep_or_stop(stop, args.read_interval)
                byte = await until_stop(recv(loop, sock, 1, kind), stop)
                if byte is None:
                    break
                kind.body_bytes += len(byte)
        except ServerClosed:
            pass
        except (OSError, ValueError) as e:
            kind.error(e)
        finally:
            kind.open_now -= 1
            sock.close()
            if first:
                first_wave.release()
                first = False
        await sleep_or_stop(stop, args.reopen_delay)


async def half_open(args, loop, kind, path, stop, first_wave):
    first = True
    while not stop.is_set():
        kind.attempts += 1
        try:
            sock = await connect(loop, args.host, args.port, 0, args.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            kind.connect_errors += 1
            kind.error(e)
            if first:
                first_wave.release()
                first = False
            await sleep_or_stop(stop, args.reopen_delay)
            continue
        kind.opened()
        if first:
            first_wave.release()
            first = False
        try:
            # A request line and the start of a header, never finished.
            await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: {args.host}\r\nX-Slow: ".encode())
            try:
                got = await until_stop(read_head(loop, sock, kind), stop)
            except ServerClosed:
                kind.no_status += 1  # hung up without an answer
                got = None
            if got is not None:
                kind.status(got[0])
                # The server answered (e.g. 408); wait for it to hang up.
                while await until_stop(recv(loop, sock, 4096, kind), stop) is not None:
                    pass
        except ServerClosed:
            pass
        except (OSError, ValueError) as e:
            kind.error(e)
        finally:
            kind.open_now -= 1
            sock.close()
        await sleep_or_stop(stop, args.reopen_delay)


async def until_stop(coro, stop):
    """coro's result, or None once stop is set first (coro is then cancelled)."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return None


async def sleep_or_stop(stop, secs):
    try:
        await asyncio.wait_for(stop.wait(), secs)
    except asyncio.TimeoutError:
        pass


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--big-paths", required=True, help="file of big-file URL paths, one per line")
    p.add_argument("--small-path", default="/health", help="path the half-open requests name")
    p.add_argument("--slow", type=int, default=1000, help="slow-reading connections")
    p.add_argument("--halfopen", type=int, default=200, help="half-open connections")
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--read-interval", type=float, default=1.0, help="seconds between 1-byte reads")
    p.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF of the slow readers (0: leave)")
    p.add_argument("--mode", choices=("full", "range", "mix"), default="mix")
    p.add_argument("--reopen-delay", type=float, default=1.0)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--ramp-per-sec", type=float, default=500, help="new connections per second while ramping up")
    p.add_argument("--ramp-timeout", type=float, default=20.0)
    p.add_argument("--ready-file", help="touched once the first wave is up")
    args = p.parse_args()

    big = [line.strip() for line in open(args.big_paths) if line.strip()]
    if not big:
        sys.exit("no big paths")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    slow, halfo = Kind("slow"), Kind("halfopen")
    started = time.monotonic()
    final = {}

    def finish():
        # Counted before anything sees stop: our own closes are not the server's.
        if not final:
            final.update(duration_secs=round(time.monotonic() - started, 1),
                         slow=slow.summary(), halfopen=halfo.summary())
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)
    first_wave = asyncio.Semaphore(0)
    rng = random.Random(7)
    tasks = []
    total = args.slow + args.halfopen
    for i in range(total):
        if stop.is_set():
            break
        if i < args.slow:
            use_range = args.mode == "range" or (args.mode == "mix" and i % 2 == 1)
            coro = slow_reader(args, loop, slow, rng.choice(big), use_range, stop, first_wave)
        else:
            coro = half_open(args, loop, halfo, args.small_path, stop, first_wave)
        tasks.append(asyncio.ensure_future(coro))
        if args.ramp_per_sec > 0:
            await asyncio.sleep(1 / args.ramp_per_sec)

    async def wait_first_wave():
        for _ in range(len(tasks)):
            await first_wave.acquire()

    try:
        await asyncio.wait_for(wait_first_wave(), max(0.1, args.ramp_timeout - (time.monotonic() - started)))
        ramp_complete = True
    except asyncio.TimeoutError:
        ramp_complete = False
    ramp_secs = time.monotonic() - started
    snapshot = {"slow": slow.summary(), "halfopen": halfo.summary()}
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            json.dump({"ramp_secs": round(ramp_secs, 2), "ramp_complete": ramp_complete, **snapshot}, f)
    print(f"hostile: ramp {ramp_secs:.1f}s complete={ramp_complete} slow open={slow.open_now} "
          f"halfopen open={halfo.open_now}", file=sys.stderr, flush=True)
    await sleep_or_stop(stop, max(0.0, args.duration - (time.monotonic() - started)))
    finish()
    result = {"ramp_secs": round(ramp_secs, 2), "ramp_complete": ramp_complete, **final}
    await asyncio.wait(tasks, timeout=5)
    for t in tasks:
        t.cancel()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
