#!/usr/bin/env python3
"""Runs every DES container of the deployment manifests against the built binaries.

  run_manifests.py --bin-dir DIR --work DIR [--k8s NAME=RENDERED.yaml]... [--compose FILE]

For each container of the rendered Kubernetes manifests (every Deployment,
StatefulSet, DaemonSet, Job, CronJob, Pod) and of the Compose file whose image
is the one the Dockerfile builds, it runs the container's exact command, args
and environment, as the container runtime would assemble them, against the
binaries in --bin-dir:

  - command/args: Kubernetes `command`/`args` or Compose `command`/`entrypoint`
    over the image's ENTRYPOINT/CMD; `$(VAR)` expanded as Kubernetes does,
    `${VAR:-default}` interpolated as Compose does (defaults only: the caller's
    environment is ignored). The executable must be in the image (the DES
    binaries the Dockerfile installs): the image is distroless, so a container
    that needs a shell (`sh -c`, CMD-SHELL, a `$VAR` no one expands) fails.
  - environment: the image's ENV, then envFrom, then env (values, ConfigMap and
    Secret keys of the rendered manifests, resourceFieldRef, fieldRef), or the
    Compose `environment` (anchors and merge keys resolved).
  - volumes: ConfigMap and Secret volumes are written out from the rendered
    objects (items, keys); emptyDir, PersistentVolumeClaim, Compose named
    volumes and tmpfs are empty directories; Compose bind mounts are the repository
    paths. Every path under a mount point is rewritten to the directory standing
    in for it, in args, in environment values and inside the mounted files, by
    mount-path prefix (nothing per manifest). The user is the manifest's
    (runAsUser / `user:`) when this runs as root.

What the check has to change to run a container on this machine, always
printed ("overrides"):
  - Secret values that are placeholders (REPLACE_ME, empty) -> test values;
  - the S3 endpoint (AWS_ENDPOINT_URL[_S3] values and `endpoint_url` in mounted
    files) -> a Garage started for the check, one per credential pair, signing
    region from AWS_REGION, set up as docker-compose.yml's garage-setup does it
    (deploy/garage/setup.py: layout, the manifests' access key, every bucket the
    manifests name); DES_S3_FORCE_PATH_STYLE=0 -> 1 (a local endpoint has no
    DNS for virtual-host bucket names);
  - a PostgreSQL connection string in the environment (postgres[ql]:// or
    key=value with host=) -> a throwaway PostgreSQL cluster started for the
    check (Debian's initdb/pg_ctl, as `nobody` when this runs as root, TLS
    off), with the table the container's --table names (default `files`) in
    the Python DES demo's schema (uid, created_at, file_location, size_bytes,
    content_type, archived), one row per sample file, 40 days old, its
    file_location relative (db-sample/<path>) and the sample copied there
    into the container's first PersistentVolumeClaim;
  - other http(s) URLs in the environment (e.g. a Pushgateway in the cluster) ->
    a local stub that accepts every request and records it;
  - addresses on a declared container port (0.0.0.0:P, [::]:P, and
    http://127.0.0.1:P / localhost:P URLs) -> 127.0.0.1:<free port>, like a port
    mapping, so runs never collide with whatever else uses the port here;
  - a PersistentVolumeClaim is seeded with the sample files (--sample), and every
    *.jsonl file an argument names inside it is written as a JSON Lines manifest
    of them.

Garage rather than s3s-fs: s3s-fs 0.14 answers a suffix range longer than the
object (the index read of a small shard) with a 500. Garage checks the signing
region, so a zones file whose locations sign for other regions than AWS_REGION
(the example overlay's replica) is served only for AWS_REGION; /ready probes
the primaries, so that goes unnoticed here.

Order within a manifest set: Compose by depends_on; Kubernetes one-shot
workloads running des-pack first (they create the store), then the other
one-shot workloads, then the long-running ones. Each set gets fresh S3 servers.

Pass/fail:
  - one-shot (Job, CronJob, Compose restart "no"): exit 0 within the deadline
    (activeDeadlineSeconds, capped); a failure prints the binary's documented
    meaning of the exit code (--help "Exit codes");
  - long-running (Deployment..., Compose restart always/unless-stopped): every
    probe (startup, readiness, liveness; httpGet on the declared port) or the
    Compose/image healthcheck (run as the exec-form command it is) passes, or,
    with none, the process is still up after a few seconds; then the preStop
    hook, SIGTERM, and exit 0 within the grace period.
Prints one line per container: set, object and container, command, result.
Exit 1 if any container fails, needs a shell, or cannot be run here.
"""

import argparse
import base64
import hashlib
import http.server
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

JOB_TIMEOUT_CAP = 180  # seconds; activeDeadlineSeconds is usually hours
STARTUP_CAP = 60  # seconds a service may take to pass its probes
IDLE_CHECK = 3  # seconds a long-running container without probes must stay up
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHELLS = {"sh", "bash", "ash", "dash", "zsh", "ksh", "busybox"}
PLACEHOLDER = re.compile(r"^(|REPLACE_?ME|CHANGE_?ME|TODO|<.*>)$", re.I)
SAMPLE_CREATED_AT = "2024-05-17T10:00:00Z"


class CannotRun(Exception):
    """The container cannot be run here; the message says why."""


class NeedsShell(Exception):
    """The container needs a shell, which the image does not have."""


# ---- the image ---------------------------------------------------------------

def dockerfile_instructions(path):
    """(INSTRUCTION, rest) pairs, continuation lines joined, comment lines dropped."""
    lines, buf = [], ""
    for raw in Path(path).read_text().splitlines():
        s = raw.strip()
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        if buf.strip():
            instr, _, rest = buf.strip().partition(" ")
            lines.append((instr.upper(), rest.strip()))
        buf = ""
    return lines


def exec_form(text):
    """A JSON exec form, or None for a shell form."""
    text = text.strip()
    if text.startswith("["):
        try:
            v = json.loads(text)
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                return v
        except json.JSONDecodeError:
            pass
    return None


def parse_duration(s, default):
    """Docker/Compose durations (1m30s, 15s, 500ms) in seconds."""
    if s is None:
        return default
    if isinstance(s, (int, float)):
        return float(s)
    total, found = 0.0, False
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(s)):
        found = True
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total if found else default


class Image:
    """What the Dockerfile's final stage puts in the image."""

    def __init__(self, path):
        stages = []
        bins = []
        for instr, rest in dockerfile_instructions(path):
            if instr == "FROM":
                stages.append({"from": rest.split()[0], "env": {}, "entrypoint": None, "cmd": None,
                               "workdir": "/", "user": None, "healthcheck": None, "expose": [],
                               "copies": []})
                continue
            if not stages:
                continue  # ARG before the first FROM
            st = stages[-1]
            if instr == "RUN":
                bins += re.findall(r"--bin\s+([\w.-]+)", rest)
            elif instr == "ENV":
                if "=" in rest.split()[0]:
                    for part in shlex.split(rest):
                        k, _, v = part.partition("=")
                        st["env"][k] = v
                else:
                    k, _, v = rest.partition(" ")
                    st["env"][k] = v.strip()
            elif instr in ("ENTRYPOINT", "CMD"):
                form = exec_form(rest)
                st[instr.lower()] = form if form is not None else ["/bin/sh", "-c", rest]
            elif instr == "WORKDIR":
                st["workdir"] = rest
            elif instr == "USER":
                st["user"] = rest
            elif instr == "EXPOSE":
                st["expose"] += [int(p.split("/")[0]) for p in rest.split()]
            elif instr == "COPY":
                parts = [p for p in rest.split() if not p.startswith("--")]
                st["copies"].append(parts[-1])
            elif instr == "HEALTHCHECK":
                if rest.upper() == "NONE":
                    st["healthcheck"] = None
                    continue
                opts, _, cmd = rest.partition("CMD")
                o = dict(re.findall(r"--([\w-]+)=(\S+)", opts))
                form = exec_form(cmd)
                st["healthcheck"] = {
                    "test": (["CMD"] + form) if form is not None else ["CMD-SHELL", cmd.strip()],
                    "interval": parse_duration(o.get("interval"), 30),
                    "timeout": parse_duration(o.get("timeout"), 30),
                    "start_period": parse_duration(o.get("start-period"), 0),
                    "retries": int(o.get("retries", 3)),
                }
        final = stages[-1]
        self.base = final["from"]
        self.env = final["env"]
        self.env.setdefault("PATH", DEFAULT_PATH)
        self.entrypoint = final["entrypoint"] or []
        self.cmd = final["cmd"] or []
        self.workdir = final["workdir"]
        self.user = final["user"]
        self.healthcheck = final["healthcheck"]
        self.expose = final["expose"]
        # The binaries built in an earlier stage, copied into a directory of this one.
        bindir = next((d for d in final["copies"] if d.rstrip("/").endswith("bin")), "/usr/local/bin")
        self.binaries = {f"{bindir.rstrip('/')}/{b}": b for b in bins}
        self.has_shell = not re.search(r"distroless|^scratch$", self.base)

    def resolve(self, argv0, env):
        """The DES binary an executable name or path means in the image, or an exception."""
        name = argv0
        if "/" not in argv0:
            for d in env.get("PATH", DEFAULT_PATH).split(":"):
                if f"{d.rstrip('/')}/{argv0}" in self.binaries:
                    name = f"{d.rstrip('/')}/{argv0}"
                    break
        if name in self.binaries:
            return self.binaries[name]
        if os.path.basename(argv0) in SHELLS:
            if self.has_shell:
                raise CannotRun(f"{argv0}: a shell; this check runs only the DES binaries")
            raise NeedsShell(f"{argv0}: needs a shell, and the image ({self.base}) has none")
        raise CannotRun(f"{argv0}: not in the image (it has {', '.join(sorted(self.binaries))})")


# ---- helpers -------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(url, timeout=2.0):
    """(status, start of the body), or (None, why)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(200).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(200).decode(errors="replace")
    except (OSError, urllib.error.URLError) as e:
        return None, str(e)


def quantity(q):
    """A Kubernetes quantity as a float (cpu: cores, memory: bytes)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q).strip())
    if not m:
        raise CannotRun(f"unparsable quantity {q!r}")
    n, suffix = float(m.group(1)), m.group(2)
    mult = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    if suffix not in mult:
        raise CannotRun(f"unknown quantity suffix in {q!r}")
    return n * mult[suffix]


def k8s_expand(s, env):
    """Kubernetes' $(VAR) expansion: defined variables only; $$ is a literal $."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = re.match(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", s[i:])
        if m and m.group(1) in env:
            out.append(env[m.group(1)])
            i += m.end()
            continue
        out.append(s[i])
        i += 1
    return "".join(out)


COMPOSE_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<val>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


def compose_interpolate(v, notes):
    """Compose's ${VAR:-default} interpolation with no variable set: defaults only."""
    if isinstance(v, dict):
        return {k: compose_interpolate(x, notes) for k, x in v.items()}
    if isinstance(v, list):
        return [compose_interpolate(x, notes) for x in v]
    if not isinstance(v, str):
        return v

    def repl(m):
        if m.group(0) == "$$":
            return "$"
        name, op, val = m.group("name") or m.group("bare"), m.group("op"), m.group("val")
        if op in (":-", "-"):
            return compose_interpolate(val, notes)
        if op in (":?", "?"):
            raise CannotRun(f"${{{name}}} must be set ({val})")
        if op not in (":+", "+"):
            notes.add(f"${name} has no default: empty")
        return ""
    return COMPOSE_VAR.sub(repl, v)


def shell_syntax(args):
    """Arguments only a shell would make sense of, as the program would receive them."""
    found = []
    for a in args:
        if re.search(r"\$\{?[A-Za-z_]|\$\([A-Za-z_]", a):
            found.append(a)
        elif a in ("&&", "||", "|", ";", ">", ">>", "<", "2>&1"):
            found.append(a)
    return found


def help_exit_codes(binary):
    """Exit code -> meaning, from the binary's --help."""
    try:
        text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    m = re.search(r"^(?:EXIT CODES|Exit codes|Exit status):?\s*(.*?)(?:\n\s*\n|\Z)", text, re.S | re.M | re.I)
    if not m:
        return {}
    section = m.group(1).strip()
    if "\n" in section:  # one code a line, continuation lines indented
        found = re.findall(r"^\s*(\d+)\s+(.+(?:\n\s{4,}\D.*)*)", section, re.M)
    else:  # "0 clean shutdown (...), 1 server error after start, 2 ..."
        found = re.findall(r"(\d+)\s+(.+?)(?=,\s*\d+\s|\.?$)", section)
    return {int(code): " ".join(meaning.split()) for code, meaning in found}


# ---- local servers ---------------------------------------------------------------

class Stub(http.server.ThreadingHTTPServer):
    """Answers every request with 200 and records it (a Pushgateway stand-in)."""

    daemon_threads = True

    def __init__(self):
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(h):
                n = int(h.headers.get("Content-Length") or 0)
                if n:
                    h.rfile.read(n)
                elif h.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(h.rfile.readline().strip() or b"0", 16)
                        h.rfile.read(size + 2)
                        if size == 0:
                            break
                self.requests.append(f"{h.command} {h.path}")
                h.send_response(200)
                h.send_header("Content-Length", "0")
                h.end_headers()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(h, *a):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class S3Servers:
    """Garage servers of one manifest set, one per credential pair, set up as
    docker-compose.yml's garage-setup does it (deploy/garage/setup.py, admin API):
    layout, the manifests' access key, and every bucket they name."""

    def __init__(self, garage, setup_py, work):
        self.garage, self.setup_py, self.work = garage, setup_py, work
        self.servers = {}  # (key, secret) -> dict(url, region, proc, admin, token, buckets, dir)

    def get(self, key, secret, region, buckets):
        if (key, secret) not in self.servers:
            if not self.garage:
                raise CannotRun("garage not found (scripts/deps.sh installs it; or set GARAGE_BIN)")
            d = self.work / f"garage-{len(self.servers)}"
            d.mkdir(parents=True)
            s3, rpc, admin = free_port(), free_port(), free_port()
            token = os.urandom(16).hex()
            (d / "garage.toml").write_text(f"""metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{os.urandom(32).hex()}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3}"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
""")
            log = open(d / "garage.log", "wb")
            proc = subprocess.Popen([self.garage, "-c", str(d / "garage.toml"), "server"],
                                    stdout=log, stderr=subprocess.STDOUT, env={"RUST_LOG": "garage=warn"})
            self.servers[(key, secret)] = {"url": f"http://127.0.0.1:{s3}", "region": region, "proc": proc,
                                           "admin": f"http://127.0.0.1:{admin}", "token": token,
                                           "buckets": set(), "dir": d}
        srv = self.servers[(key, secret)]
        for b in sorted(set(buckets) - srv["buckets"]):
            env = {"GARAGE_ADMIN_URL": srv["admin"], "GARAGE_ADMIN_TOKEN": srv["token"],
                   "DES_S3_ACCESS_KEY": key, "DES_S3_SECRET_KEY": secret, "DES_S3_BUCKET": b,
                   "GARAGE_SETUP_TIMEOUT": "30", "PATH": os.environ.get("PATH", DEFAULT_PATH)}
            r = subprocess.run([sys.executable, self.setup_py], env=env, capture_output=True, text=True,
                               timeout=90)
            if r.returncode != 0:
                raise CannotRun(f"Garage setup of bucket {b} failed: {(r.stderr or r.stdout).strip()[-300:]} "
                                f"(log: {srv['dir']}/garage.log)")
            srv["buckets"].add(b)
        return srv["url"], srv["region"]

    def stop(self):
        for srv in self.servers.values():
            srv["proc"].terminate()
            try:
                srv["proc"].wait(10)
            except subprocess.TimeoutExpired:
                srv["proc"].kill()
                srv["proc"].wait()
        self.servers.clear()


class Postgres:
    """One throwaway PostgreSQL cluster per manifest set, started on first use."""

    def __init__(self, work):
        self.work, self.port, self.dir, self.bin = work, None, None, None

    def _as_server(self, argv):
        return ["runuser", "-u", "nobody", "--"] + argv if os.geteuid() == 0 else argv

    def url(self):
        if self.port is None:
            versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                              key=lambda p: int(p.parent.parent.name))
            if not versions:
                raise CannotRun("PostgreSQL not installed (scripts/deps.sh installs Debian's postgresql)")
            self.bin = versions[-1].parent
            # /tmp: the server user must reach it.
            self.dir = Path(tempfile.mkdtemp(prefix="des-manifests-pg-", dir="/tmp"))
            os.chmod(self.dir, 0o777)
            data = self.dir / "data"
            r = subprocess.run(self._as_server([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres",
                                                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise CannotRun(f"initdb: {r.stderr.strip()[-300:]}")
            port = free_port()
            with open(data / "postgresql.conf", "a") as f:
                f.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                        f"unix_socket_directories = '{self.dir}'\nfsync = off\n")
            r = subprocess.run(self._as_server([str(self.bin / "pg_ctl"), "-D", str(data), "-l",
                                                str(self.dir / "log"), "-w", "-t", "60", "start"]),
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise CannotRun(f"pg_ctl start: {r.stderr.strip()[-300:]} (log: {self.dir}/log)")
            self.port = port
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres sslmode=disable"

    def seed(self, table, files):
        """Creates `table` (if missing) with one row per (uid, relative path, size)."""
        if not re.fullmatch(r"[A-Za-z_][\w.]*", table):
            raise CannotRun(f"--table {table!r}: not a plain table name")
        rows = ",\n".join(
            "({}, now() - interval '40 days', {}, {}, 'application/octet-stream')".format(
                _sql_text(uid), _sql_text(rel), size) for uid, rel, size in files)
        sql = (f"CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, uid text NOT NULL, "
               "created_at timestamptz NOT NULL, file_location text NOT NULL, size_bytes bigint, "
               "content_type text, archived boolean NOT NULL DEFAULT false, UNIQUE (uid, created_at));\n"
               f"INSERT INTO {table} (uid, created_at, file_location, size_bytes, content_type) "
               f"VALUES {rows} ON CONFLICT DO NOTHING;\n")
        r = subprocess.run([str(self.bin / "psql"), "-v", "ON_ERROR_STOP=1", "-q", self.url()],
                           input=sql, capture_output=True, text=True)
        if r.returncode != 0:
            raise CannotRun(f"seeding {table}: {r.stderr.strip()[-300:]}")

    def stop(self):
        if self.port is not None:
            subprocess.run(self._as_server([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"),
                                            "-m", "immediate", "-w", "stop"]), capture_output=True)
            self.port = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _sql_text(v):
    return "'" + str(v).replace("'", "''") + "'"


PG_URL = re.compile(r"^\s*(postgres(ql)?://\S+|(\w+=\S*\s+)*host=\S+.*)$")


# ---- containers --------------------------------------------------------------------

class Container:
    """One container as a manifest declares it, before anything is rewritten."""

    def __init__(self, **kw):
        self.set_name = kw["set_name"]
        self.obj = kw["obj"]  # "Deployment/des-retriever" or "service retriever"
        self.name = kw["name"]
        self.image = kw["image"]
        self.ours = kw["ours"]
        self.argv = kw["argv"]  # in-container argv, expanded, or None if not ours
        self.env = kw["env"]  # ordered dict of in-container values
        self.secret_env = kw.get("secret_env", set())  # names whose value came from a Secret
        self.mounts = kw["mounts"]  # [(mountPath, kind, payload, readOnly)]
        self.user = kw.get("user")  # (uid, gid) or None
        self.fs_group = kw.get("fs_group")
        self.read_only_root = kw.get("read_only_root", False)
        self.workdir = kw["workdir"]
        self.ports = kw.get("ports", {})  # name or str(number) -> containerPort
        self.long_running = kw["long_running"]
        self.probes = kw.get("probes", [])  # [(kind, path, port, period, failures)]
        self.healthcheck = kw.get("healthcheck")  # Compose/image: {"test": [...], ...}
        self.prestop = kw.get("prestop")
        self.grace = kw.get("grace", 30)
        self.deadline = kw.get("deadline")
        self.runs = kw.get("runs", [{}])  # per-run extra env (Indexed Job completions)
        self.order = kw.get("order", 1)


def pod_containers(set_name, doc, objects, image):
    """The containers of a workload object (Deployment, CronJob, Job, ...)."""
    kind, meta = doc["kind"], doc["metadata"]
    spec = doc.get("spec", {})
    if kind == "CronJob":
        job = spec["jobTemplate"]["spec"]
    elif kind == "Job":
        job = spec
    else:
        job = None
    pod = (job or spec)["template"]["spec"] if kind != "Pod" else spec
    long_running = kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet") or (
        kind == "Pod" and pod.get("restartPolicy", "Always") == "Always")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    psc = pod.get("securityContext", {})
    runs = [{}]
    if job and job.get("completionMode") == "Indexed":
        runs = [{"__index": str(i)} for i in range(int(job.get("completions", 1)))]
    out = []
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        csc = c.get("securityContext", {})
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup", uid))
        mounts = []
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is None:
                mounts.append((m["mountPath"], "missing", m["name"], True))
                continue
            kind_v = next((k for k in ("configMap", "secret", "emptyDir", "persistentVolumeClaim",
                                       "projected", "hostPath", "downwardAPI") if k in v), "other")
            mounts.append((m["mountPath"], kind_v, (v, m.get("subPath")), m.get("readOnly", False)))
        ports = {}
        for p in c.get("ports", []):
            ports[str(p["containerPort"])] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
        probes = []
        for pk in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(pk)
            if not p:
                continue
            if "httpGet" in p:
                probes.append((pk, p["httpGet"].get("path", "/"), str(p["httpGet"]["port"]),
                               p.get("periodSeconds", 10), p.get("failureThreshold", 3)))
            elif "exec" in p:
                probes.append((pk, "exec", p["exec"]["command"], p.get("periodSeconds", 10),
                               p.get("failureThreshold", 3)))
            elif "tcpSocket" in p:
                probes.append((pk, "tcp", str(p["tcpSocket"]["port"]), p.get("periodSeconds", 10),
                               p.get("failureThreshold", 3)))
            else:
                probes.append((pk, "other", None, 0, 0))
        prestop = (c.get("lifecycle") or {}).get("preStop")
        ours = re.sub(r"[:@].*$", "", c["image"]).rsplit("/", 1)[-1] == image.name
        cont = Container(
            set_name=set_name, obj=f"{kind}/{meta['name']}", name=c["name"], image=c["image"],
            ours=ours, argv=(list(c["command"]) + list(c.get("args", []))) if "command" in c
            else list(image.entrypoint) + list(c.get("args", image.cmd)), env={}, mounts=mounts, user=(uid, gid) if uid is not None else None,
            fs_group=psc.get("fsGroup"), read_only_root=csc.get("readOnlyRootFilesystem", False),
            workdir=c.get("workingDir", image.workdir), ports=ports, long_running=long_running,
            probes=probes, prestop=prestop,
            grace=pod.get("terminationGracePeriodSeconds", 30),
            deadline=(job or {}).get("activeDeadlineSeconds"), runs=runs)
        cont.k8s = (c, pod, doc, objects)
        out.append(cont)
    return out


def lookup(objects, kind, name, namespace):
    """The object a pod in `namespace` gets for a reference, or CannotRun naming what is there."""
    for o in objects:
        if o["kind"] == kind and o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace:
            return o
    near = [f"{o['metadata']['name']} in namespace {o['metadata'].get('namespace') or '(none)'}"
            for o in objects if o["kind"] == kind and (o["metadata"]["name"] == name
                                                     or o["metadata"]["name"].startswith(name + "-"))]
    where = f"namespace {namespace}" if namespace else "no namespace (kubectl's default)"
    raise CannotRun(f"{kind} {name} referenced from {where} is not in the rendered manifests"
                    + (f" (rendered: {', '.join(near)})" if near else " (a cluster's own?)"))


def k8s_env(c, objects, image, run):
    """The container's environment as the kubelet builds it: image ENV, envFrom, env."""
    spec, pod, doc, _ = c.k8s
    env, from_secret = dict(image.env), set()
    ns = doc["metadata"].get("namespace")

    def cm_data(name):
        return dict(lookup(objects, "ConfigMap", name, ns).get("data") or {})

    def secret_data(name):
        s = lookup(objects, "Secret", name, ns)
        d = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
        d.update(s.get("stringData") or {})
        return d

    for ef in spec.get("envFrom", []):
        prefix = ef.get("prefix", "")
        if "configMapRef" in ef:
            for k, v in cm_data(ef["configMapRef"]["name"]).items():
                env[prefix + k] = v
        elif "secretRef" in ef:
            for k, v in secret_data(ef["secretRef"]["name"]).items():
                env[prefix + k] = v
                from_secret.add(prefix + k)
    for e in spec.get("env", []):
        name = e["name"]
        if "value" in e:
            env[name] = k8s_expand(str(e["value"]), env)
            continue
        vf = e.get("valueFrom", {})
        if "configMapKeyRef" in vf:
            r = vf["configMapKeyRef"]
            d = cm_data(r["name"])
            if r["key"] not in d:
                raise CannotRun(f"{name}: ConfigMap {r['name']} has no key {r['key']}")
            env[name] = d[r["key"]]
        elif "secretKeyRef" in vf:
            r = vf["secretKeyRef"]
            d = secret_data(r["name"])
            if r["key"] not in d:
                raise CannotRun(f"{name}: Secret {r['name']} has no key {r['key']}")
            env[name] = d[r["key"]]
            from_secret.add(name)
        elif "resourceFieldRef" in vf:
            r = vf["resourceFieldRef"]
            what, _, res = r["resource"].partition(".")
            value = (spec.get("resources", {}).get(what) or {}).get(res)
            if value is None:
                raise CannotRun(f"{name}: {r['resource']} is not set")
            env[name] = str(math.ceil(quantity(value) / quantity(r.get("divisor", "1"))))
        elif "fieldRef" in vf:
            path = vf["fieldRef"]["fieldPath"]
            if "job-completion-index" in path:
                if "__index" not in run:
                    raise CannotRun(f"{name}: {path} exists only in an Indexed Job")
                env[name] = run["__index"]
            elif path in ("metadata.name", "spec.nodeName"):
                env[name] = f"{doc['metadata']['name']}-check"
            elif path == "metadata.namespace":
                env[name] = doc["metadata"].get("namespace", "default")
            elif path.startswith("status.") and path.endswith("IP"):
                env[name] = "127.0.0.1"
            else:
                raise CannotRun(f"{name}: fieldRef {path} is not emulated")
        else:
            raise CannotRun(f"{name}: unsupported valueFrom {sorted(vf)}")
    if "__index" in run:
        env["JOB_COMPLETION_INDEX"] = run["__index"]  # injected by the Job controller
    env.setdefault("HOSTNAME", f"{doc['metadata']['name']}-check")
    return env, from_secret


def k8s_files(c, objects):
    """mountPath -> {relative file: bytes} for ConfigMap/Secret volumes; kinds otherwise."""
    ns = c.k8s[2]["metadata"].get("namespace")
    out = []
    for mount_path, kind, payload, ro in c.mounts:
        if kind == "missing":
            raise CannotRun(f"volume {payload} of mount {mount_path} is not declared")
        vol, sub = payload
        if kind in ("configMap", "secret"):
            ref = vol[kind]
            name = ref.get("name") or ref.get("secretName")
            try:
                o = lookup(objects, "ConfigMap" if kind == "configMap" else "Secret", name, ns)
            except CannotRun:
                if ref.get("optional"):
                    out.append((mount_path, "dir", {}, ro, kind, name))
                    continue
                raise
            data = {k: v.encode() for k, v in (o.get("data") or {}).items()} if kind == "configMap" else \
                {k: base64.b64decode(v) for k, v in (o.get("data") or {}).items()}
            if kind == "configMap":
                data.update({k: base64.b64decode(v) for k, v in (o.get("binaryData") or {}).items()})
            else:
                data.update({k: v.encode() for k, v in (o.get("stringData") or {}).items()})
            if ref.get("items"):
                picked = {}
                for it in ref["items"]:
                    if it["key"] not in data:
                        raise CannotRun(f"{kind} {name} has no key {it['key']}")
                    picked[it["path"]] = data[it["key"]]
                data = picked
            if sub:
                data = {"": data[sub]} if sub in data else {}
            out.append((mount_path, "files", data, ro, kind, name))
        elif kind in ("emptyDir", "persistentVolumeClaim"):
            key = vol["persistentVolumeClaim"]["claimName"] if kind == "persistentVolumeClaim" else None
            if key:
                lookup(objects, "PersistentVolumeClaim", key, ns)
            out.append((mount_path, "dir", key, ro, kind, key or vol["name"]))
        else:
            raise CannotRun(f"mount {mount_path}: {kind} volumes are not emulated")
    return out


def compose_containers(path, image, notes):
    raw = yaml.safe_load(Path(path).read_text())
    doc = compose_interpolate(raw, notes)
    services = doc.get("services", {})
    order, seen = [], set()

    def visit(n, stack=()):
        if n in seen:
            return
        if n in stack:
            raise SystemExit(f"compose: depends_on cycle at {n}")
        deps = services[n].get("depends_on") or []
        for d in (deps if isinstance(deps, list) else list(deps)):
            visit(d, stack + (n,))
        seen.add(n)
        order.append(n)
    for n in services:
        visit(n)
    out = []
    base = Path(path).resolve().parent
    for n in order:
        s = services[n]
        build = s.get("build")
        ours = bool(build) and Path(base, build.get("context", ".") if isinstance(build, dict) else build,
                                     (build.get("dockerfile", "Dockerfile") if isinstance(build, dict)
                                      else "Dockerfile")).resolve() == Path(image.path).resolve()
        env = dict(image.env)
        senv = s.get("environment") or {}
        if isinstance(senv, list):
            senv = dict(e.split("=", 1) if "=" in e else (e, "") for e in senv)
        env.update({k: "" if v is None else str(v) for k, v in senv.items()})
        env.setdefault("HOSTNAME", f"{n}-check")
        if not ours:
            out.append(Container(set_name=str(path), obj=f"service {n}", name=n, image=s.get("image", "?"),
                                 ours=False, argv=None, env=env, mounts=[], workdir="/", long_running=False))
            continue
        entry = s.get("entrypoint", image.entrypoint)
        cmd = s.get("command", image.cmd if "entrypoint" not in s else [])
        if isinstance(entry, str):
            entry = shlex.split(entry)
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        mounts = []
        for v in s.get("volumes", []):
            if isinstance(v, str):
                parts = v.split(":")
                src, dst = parts[0], parts[1]
                ro = len(parts) > 2 and "ro" in parts[2].split(",")
                typ = "bind" if src.startswith((".", "/", "~")) else "volume"
            else:
                src, dst, ro, typ = v.get("source"), v["target"], v.get("read_only", False), v.get("type", "volume")
            if typ == "bind":
                mounts.append((dst, "bind", str((base / src).resolve()), ro))
            elif typ == "tmpfs":
                mounts.append((dst, "tmpfs", None, False))
            else:
                mounts.append((dst, "volume", src, ro))
        for t in s.get("tmpfs", []) or []:
            mounts.append((t.split(":")[0], "tmpfs", None, False))
        user = None
        if "user" in s or image.user:
            u = str(s.get("user", image.user)).split(":")
            if u[0].isdigit():
                user = (int(u[0]), int(u[1]) if len(u) > 1 and u[1].isdigit() else int(u[0]))
        hc = s.get("healthcheck")
        if hc is None:
            hc = image.healthcheck
        elif hc.get("disable") or hc.get("test") in (["NONE"], "NONE"):
            hc = None
        else:
            test = hc["test"]
            if isinstance(test, str):
                test = ["CMD-SHELL", test]
            hc = {"test": test, "interval": parse_duration(hc.get("interval"), 30),
                  "start_period": parse_duration(hc.get("start_period"), 0),
                  "retries": int(hc.get("retries", 3)), "timeout": parse_duration(hc.get("timeout"), 30)}
        ports = {}
        for p in (s.get("ports") or []) + (s.get("expose") or []) + image.expose:
            if isinstance(p, dict):
                cp = int(p["target"])
            else:
                cp = int(str(p).split("/")[0].rsplit(":", 1)[-1])
            ports[str(cp)] = cp
        restart = str(s.get("restart", "no"))
        out.append(Container(
            set_name=str(path), obj=f"service {n}", name=n, image=s.get("image", "(build)"), ours=True,
            argv=list(entry) + list(cmd), env=env, mounts=mounts, user=user,
            read_only_root=bool(s.get("read_only")), workdir=s.get("working_dir", image.workdir),
            ports=ports, long_running=restart in ("always", "unless-stopped"), healthcheck=hc,
            grace=parse_duration(s.get("stop_grace_period"), 10), order=0))
    return out


# ---- running -------------------------------------------------------------------------

PATH_END = r"(?=$|[/\s\"',;:=}\]\)])"


class Runner:
    def __init__(self, args, image):
        self.args, self.image = args, image
        self.bin_dir = Path(args.bin_dir).resolve()
        self.work = Path(args.work).resolve()
        self.sample = Path(args.sample).resolve()
        self.exit_codes = {}
        self.failed = 0

    def codes(self, binary):
        if binary not in self.exit_codes:
            self.exit_codes[binary] = help_exit_codes(str(self.bin_dir / binary))
        return self.exit_codes[binary]

    # One manifest set: fresh S3, stub, volumes.
    def run_set(self, set_name, containers, set_dir):
        shutil.rmtree(set_dir, ignore_errors=True)
        set_dir.mkdir(parents=True)
        s3 = S3Servers(self.args.garage, self.args.garage_setup, set_dir)
        self.pg = Postgres(set_dir)
        stub = Stub()
        shared = {}  # PVC / named volume -> directory, shared by the set's containers
        overrides = set()
        try:
            for c in sorted(containers, key=lambda c: c.order):
                for i, run in enumerate(c.runs):
                    label = c.name if len(c.runs) == 1 else f"{c.name}[{i}]"
                    self.one(set_name, c, run, label, set_dir, s3, stub, shared, overrides)
        finally:
            for srv in s3.servers.values():
                overrides.add(f"S3: a Garage started for the check (region {srv['region']}, access key "
                              f"from the manifests, set up by {self.args.garage_setup}), buckets "
                              f"{', '.join(sorted(srv['buckets']))}")
            s3.stop()
            self.pg.stop()
            stub.shutdown()
        for o in sorted(overrides):
            print(f"    override: {o}")

    def report(self, set_name, c, label, argv, ok, result):
        cmd = " ".join(shlex.quote(a) for a in argv) if argv else "-"
        status = "ok" if ok is True else ("skip" if ok is None else "FAIL")
        if ok is False:
            self.failed += 1
        print(f"manifests: {set_name} | {c.obj} {label} | {cmd} | {status}: {result}", flush=True)

    def one(self, set_name, c, run, label, set_dir, s3, stub, shared, overrides):
        if not c.ours:
            self.report(set_name, c, label, None, None, f"image {c.image} is not the DES image")
            return
        run_dir = set_dir / re.sub(r"[^\w.-]+", "_", f"{c.obj}-{label}")
        run_dir.mkdir(parents=True)
        try:
            prep = self.prepare(c, run, run_dir, s3, stub, shared, overrides)
        except NeedsShell as e:
            self.report(set_name, c, label, c.argv, False, f"needs a shell: {e}")
            return
        except CannotRun as e:
            self.report(set_name, c, label, c.argv, False, f"cannot run here: {e}")
            return
        argv, env, cwd, user, binary, addr = prep
        shown = c.argv_shown
        try:
            if c.long_running:
                ok, result = self.serve(c, argv, env, cwd, user, run_dir, addr, stub)
            else:
                ok, result = self.finish(c, argv, env, cwd, user, run_dir, binary, stub)
        except NeedsShell as e:
            ok, result = False, f"needs a shell: {e}"
        except CannotRun as e:
            ok, result = False, f"cannot run here: {e}"
        self.report(set_name, c, label, shown, ok, result)

    def prepare(self, c, run, run_dir, s3, stub, shared, overrides):
        if hasattr(c, "k8s"):
            spec = c.k8s[0]
            env, from_secret = k8s_env(c, c.k8s[3], self.image, run)
            # Kubernetes: command replaces ENTRYPOINT, args replace CMD.
            if "command" in spec:
                argv = list(spec["command"]) + list(spec.get("args", []))
            else:
                argv = list(self.image.entrypoint) + list(spec.get("args", self.image.cmd))
            argv = [k8s_expand(str(a), env) for a in argv]
            files = k8s_files(c, c.k8s[3])
        else:
            env, from_secret = dict(c.env), set()
            argv = list(c.argv)
            files = [(m, k, p, ro, k, p) for m, k, p, ro in c.mounts]
        if not argv:
            raise CannotRun("no command (neither the manifest nor the image has one)")
        c.argv_shown = argv
        hook = ((c.prestop or {}).get("exec") or {}).get("command")
        if hook:
            self.image.resolve(hook[0], env)
        for p in c.probes:
            if p[1] == "exec":
                self.image.resolve(p[2][0], env)
            elif p[1] == "other":
                raise CannotRun(f"{p[0]}: only httpGet, tcpSocket and exec probes are emulated")
        if c.healthcheck and c.healthcheck["test"][0] == "CMD-SHELL":
            raise NeedsShell(f"healthcheck {c.healthcheck['test'][1]!r} is CMD-SHELL (/bin/sh -c)")
        if c.healthcheck and c.healthcheck["test"][0] == "CMD":
            self.image.resolve(c.healthcheck["test"][1], env)
        binary = self.image.resolve(argv[0], env)
        literal = shell_syntax(argv[1:])
        if literal:
            raise NeedsShell(f"{' '.join(literal)}: passed literally, only a shell would expand it")

        # Secrets: placeholders -> test values.
        for k in sorted(from_secret):
            if PLACEHOLDER.match(env[k].strip()):
                env[k] = test_value(k)
                overrides.add(f"Secret value {k}: placeholder -> test value {env[k]}")

        # Volumes.
        mapping = {}  # mount path -> host dir
        materialised = []
        for mount_path, what, data, ro, kind, name in files:
            if what == "files":
                d = run_dir / "mnt" / mount_path.strip("/")
                d.mkdir(parents=True, exist_ok=True)
                for rel, content in data.items():
                    f = d / rel if rel else d
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_bytes(content)
                    materialised.append(f)
                mapping[mount_path] = d
            elif what in ("dir", "volume", "tmpfs", "emptyDir", "persistentVolumeClaim"):
                key = (kind, name) if kind in ("persistentVolumeClaim", "volume") else None
                if key and key in shared:
                    d = shared[key]
                else:
                    d = run_dir / "mnt" / mount_path.strip("/")
                    d.mkdir(parents=True, exist_ok=True)
                    os.chmod(d, 0o1777)
                    if key:
                        shared[key] = d
                mapping[mount_path] = d
            elif what == "bind":
                mapping[mount_path] = Path(data)
            else:
                raise CannotRun(f"mount {mount_path}: {what}")

        # One pass, longest mount path first, so a replacement is never rewritten again.
        by_path = {mp.rstrip("/") or "/": str(d) for mp, d in mapping.items()}
        mount_re = re.compile(r"(?<![\w.~-])(" + "|".join(
            re.escape(mp) for mp in sorted(by_path, key=len, reverse=True)) + ")" + PATH_END)

        def rewrite_paths(s):
            return mount_re.sub(lambda m: by_path[m.group(1)], s) if by_path else s

        # S3: credentials, buckets, endpoint.
        texts = [v for v in env.values()] + argv + [f.read_text(errors="replace") for f in materialised]
        buckets = set()
        for t in texts:
            buckets |= set(re.findall(r"s3://([a-z0-9][a-z0-9._-]{1,62})", t))
            for doc in _yaml_or_toml(t):
                buckets |= zones_buckets(doc)
        endpoints = {env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3") if env.get(k)}
        for t in texts[len(env) + len(argv):]:
            endpoints |= set(re.findall(r"endpoint_url\s*[:=]\s*[\"']?([a-z]+://[^\"'\s,}]+)", t))
        uses_s3 = bool(buckets)
        if uses_s3:
            key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
            if not key or not secret:
                raise CannotRun("S3 store but no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment "
                                "(credentials from the cluster, e.g. IRSA, are not emulated)")
            region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
            url, _ = s3.get(key, secret, region, sorted(buckets))
        else:
            url = None

        # Ports: addresses on a declared container port -> a free local port.
        ports = {}
        addr = {}

        def port_for(p):
            if p not in ports:
                ports[p] = free_port()
            return ports[p]
        declared = sorted(set(c.ports.values()))

        def rewrite_addrs(s):
            for p in declared:
                s = re.sub(r"(?<![\w.])(?:0\.0\.0\.0|\[::\]):" + str(p) + r"(?!\d)",
                           lambda _m, p=p: f"127.0.0.1:{port_for(p)}", s)
                s = re.sub(r"(?<=://)(?:127\.0\.0\.1|localhost|\[::1\]):" + str(p) + r"(?!\d)",
                           lambda _m, p=p: f"127.0.0.1:{port_for(p)}", s)
            return s

        def rewrite_urls(s):
            if url:
                for e in sorted(endpoints, key=len, reverse=True):
                    s = s.replace(e, url)
            return s

        for k in list(env):
            v = env[k]
            new = rewrite_urls(v)
            if k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3") and url:
                new = url
            elif re.fullmatch(r"https?://\S+", new) and new == v and not new.startswith(url or "\0"):
                new = stub.url
                overrides.add(f"{k}={v} -> a local stub HTTP server (records requests)")
            if k == "DES_S3_FORCE_PATH_STYLE" and url and v.strip().lower() in ("0", "false"):
                new = "1"
                overrides.add(f"DES_S3_FORCE_PATH_STYLE={v} -> 1 (no DNS for <bucket>.127.0.0.1)")
            if new != v and k.startswith("AWS_ENDPOINT_URL"):
                overrides.add(f"{k}={v} -> the local S3 server")
            env[k] = rewrite_paths(rewrite_addrs(new))
        argv = [rewrite_paths(rewrite_addrs(rewrite_urls(a))) for a in argv]
        for f in materialised:
            t = f.read_text(errors="replace")
            new = rewrite_paths(rewrite_addrs(rewrite_urls(t)))
            if rewrite_urls(t) != t:
                overrides.add(f"endpoint_url in {f.name} -> the local S3 server")
            if new != t:
                f.write_text(new)
        for p in declared:
            addr[p] = port_for(p)
        if ports:
            overrides.add("addresses on declared container ports (0.0.0.0:P, [::]:P, http://127.0.0.1:P) "
                          "-> 127.0.0.1:<a free port>")

        # A PVC holds the sample and a manifest at every *.jsonl path an argument names in it.
        for mount_path, what, data, ro, kind, name in files:
            if kind != "persistentVolumeClaim":
                continue
            d = mapping[mount_path]
            for a in argv:
                for m in re.finditer(re.escape(str(d)) + r"/([\w./-]+\.jsonl)", a):
                    seed_manifest(d, m.group(1), self.sample)
                    overrides.add(f"PVC {name}: seeded with {self.sample.name}/ and a manifest "
                                  f"{mount_path}/{m.group(1)} listing it")

        self.database(env, argv, files, mapping, overrides)

        # The process: its own environment only, the image's working directory and user.
        env.setdefault("HOME", str(run_dir / "home"))
        (run_dir / "home").mkdir(exist_ok=True)
        os.chmod(run_dir / "home", 0o1777)
        tmp = mapping.get("/tmp")
        if tmp is None:
            tmp = run_dir / "tmp-image"
            tmp.mkdir(exist_ok=True)
            os.chmod(tmp, 0o555 if c.read_only_root else 0o1777)
        env["TMPDIR"] = str(tmp)  # the container's /tmp
        cwd = mapping.get(c.workdir) or (tmp if c.workdir == "/tmp" else run_dir)
        user = c.user if os.geteuid() == 0 else None
        if user and c.fs_group is not None:
            user = (user[0], user[1], c.fs_group)
        argv = [str(self.bin_dir / binary)] + argv[1:]
        if not Path(argv[0]).is_file():
            raise CannotRun(f"{argv[0]} not built")
        self.rw = lambda s: rewrite_paths(rewrite_addrs(rewrite_urls(s)))
        return argv, env, str(cwd), user, binary, addr

    def database(self, env, argv, files, mapping, overrides):
        """A PostgreSQL connection string -> the set's throwaway cluster, seeded (see the top)."""
        keys = [k for k, v in env.items() if PG_URL.match(v)]
        if not keys:
            return
        pvcs = [mapping[mp] for mp, _w, _d, _ro, kind, _n in files if kind == "persistentVolumeClaim"]
        if not pvcs:
            raise CannotRun("a database lists files, but no PersistentVolumeClaim holds them")
        dest = pvcs[0] / "db-sample"
        if not dest.exists():
            shutil.copytree(self.sample, dest)
            for p in [dest] + list(dest.rglob("*")):
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
        table = next((a.split("=", 1)[1] for a in argv if a.startswith("--table=")), "files")
        sample = [(f.relative_to(dest).as_posix(), f.relative_to(pvcs[0]).as_posix(), f.stat().st_size)
                  for f in sorted(dest.rglob("*")) if f.is_file()]
        url = self.pg.url()
        self.pg.seed(table, sample)
        for k in keys:
            env[k] = url
            overrides.add(f"{k}: -> a PostgreSQL started for the check (TLS off), table {table} "
                          f"seeded with {len(sample)} rows for {self.sample.name}/ copied into the PVC")

    def popen(self, argv, env, cwd, user, log):
        kw = {}
        if user:
            kw = {"user": user[0], "group": user[1], "extra_groups": [user[2]] if len(user) > 2 else []}
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **kw)

    def finish(self, c, argv, env, cwd, user, run_dir, binary, stub):
        timeout = min(c.deadline or JOB_TIMEOUT_CAP, JOB_TIMEOUT_CAP)
        before = len(stub.requests)
        with open(run_dir / "output.log", "wb") as log:
            t0 = time.monotonic()
            p = self.popen(argv, env, cwd, user, log)
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                return False, f"still running after {timeout}s (log: {run_dir}/output.log)"
        took = time.monotonic() - t0
        pushed = stub.requests[before:]
        extra = f", sent {', '.join(pushed)} to the stub" if pushed else ""
        if rc == 0:
            return True, f"exit 0 in {took:.1f}s{extra}"
        meaning = self.codes(binary).get(rc, "undocumented exit code")
        return False, f"exit {rc} ({meaning}); log: {run_dir}/output.log: {tail(run_dir / 'output.log')}"

    def serve(self, c, argv, env, cwd, user, run_dir, addr, stub):
        log = open(run_dir / "output.log", "wb")
        p = self.popen(argv, env, cwd, user, log)
        try:
            def alive():
                return p.poll() is None

            def died():
                return False, f"exited {p.returncode} before passing its checks: {tail(run_dir / 'output.log')}"
            checks = []
            for kind, path, port, period, failures in c.probes:
                budget = min(STARTUP_CAP, period * failures) if kind == "startupProbe" else 2 * period
                if path == "exec":
                    hc = {"test": ["CMD"] + list(port), "retries": failures, "interval": period}
                    ok, why = self.exec_check(hc, env, cwd, user, alive, budget)
                else:
                    cport = c.ports.get(port)
                    if cport is None:
                        return False, f"{kind}: port {port} is not declared by the container"
                    host = addr[cport]
                    ok, why = wait_probe(path, host, budget, alive)
                    why = f"{kind} {'GET ' + path if path != 'tcp' else 'tcp'} :{cport} {why}"
                if not alive():
                    return died()
                if not ok:
                    return False, f"{why}; log: {tail(run_dir / 'output.log')}"
                checks.append(why)
            if not c.probes and c.healthcheck:
                budget = min(STARTUP_CAP, c.healthcheck["start_period"]
                             + c.healthcheck["interval"] * c.healthcheck["retries"])
                ok, why = self.exec_check(c.healthcheck, env, cwd, user, alive, budget)
                if not alive():
                    return died()
                if not ok:
                    return False, f"{why}; log: {tail(run_dir / 'output.log')}"
                checks.append(why)
            if not c.probes and not c.healthcheck:
                time.sleep(IDLE_CHECK)
                if not alive():
                    return died()
                checks.append(f"up after {IDLE_CHECK}s (no health check declared)")
            grace = c.grace
            if c.prestop:
                if "sleep" in c.prestop:
                    grace -= c.prestop["sleep"]["seconds"]
                    checks.append(f"preStop sleep {c.prestop['sleep']['seconds']}s (not waited)")
                elif "exec" in c.prestop:
                    hc = {"test": ["CMD"] + c.prestop["exec"]["command"], "retries": 1, "interval": 1}
                    ok, why = self.exec_check(hc, env, cwd, user, alive, 10)
                    if not ok:
                        return False, f"preStop: {why}"
                elif "httpGet" in c.prestop:
                    cport = c.ports.get(str(c.prestop["httpGet"]["port"]))
                    st, _ = http_get(f"http://127.0.0.1:{addr[cport]}{c.prestop['httpGet'].get('path', '/')}")
                    checks.append(f"preStop GET -> {st}")
            t1 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(max(grace, 1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                return False, f"{'; '.join(checks)}; still running {grace}s after SIGTERM (killed)"
            stop = time.monotonic() - t1
            if rc != 0:
                return False, (f"{'; '.join(checks)}; SIGTERM -> exit {rc} "
                               f"({self.codes(Path(argv[0]).name).get(rc, 'undocumented')})")
            return True, f"{'; '.join(checks)}; SIGTERM -> exit 0 in {stop:.1f}s (grace {grace}s)"
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()

    def exec_check(self, hc, env, cwd, user, alive, budget):
        """A Compose/image healthcheck or exec probe: the command itself, run in the container."""
        test = hc["test"]
        if test[0] != "CMD":
            raise NeedsShell(f"{test[0]} {test[1:]!r} runs /bin/sh -c")
        argv = [test[1]] + [self.rw(a) for a in test[2:]]
        binary = self.image.resolve(argv[0], env)
        shown = " ".join(argv)
        end = time.monotonic() + budget
        last = None
        while time.monotonic() < end and alive():
            r = subprocess.run([str(self.bin_dir / binary)] + argv[1:], env=env, cwd=cwd,
                               capture_output=True, text=True, timeout=30,
                               **({"user": user[0], "group": user[1]} if user else {}))
            if r.returncode == 0:
                return True, f"healthcheck `{shown}` exit 0"
            last = f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}"
            time.sleep(0.2)
        return False, f"healthcheck `{shown}` never passed ({last})"


def wait_probe(path, port, budget, alive):
    end = time.monotonic() + budget
    t0 = time.monotonic()
    last = None
    while time.monotonic() < end and alive():
        if path == "tcp":
            if wait_tcp(port, 0.5):
                return True, f"open after {time.monotonic() - t0:.1f}s"
        else:
            st, body = http_get(f"http://127.0.0.1:{port}{path}")
            last = f"{st} {' '.join(body.split())[:80]}".strip()
            if st is not None and 200 <= st < 400:
                return True, f"{last} after {time.monotonic() - t0:.1f}s"
        time.sleep(0.1)
    return False, f"no success within {budget}s (last answer: {last})"


def test_value(name):
    """A stand-in for a Secret value, in the form Garage wants for S3 keys."""
    h = hashlib.sha256(name.encode()).hexdigest()
    if re.search(r"ACCESS_KEY(_ID)?$", name) and "SECRET" not in name:
        return "GK" + h[:24]
    return h


def tail(path, n=3):
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(l.strip()[:300] for l in lines[-n:])


def _yaml_or_toml(text):
    import tomllib
    try:
        d = yaml.safe_load(text)
        if isinstance(d, dict):
            return [d]
    except yaml.YAMLError:
        pass
    try:
        return [tomllib.loads(text)]
    except tomllib.TOMLDecodeError:
        return []


def zones_buckets(doc):
    """Buckets of a zones file (des-storage format): every zone's s3 and replicas."""
    out = set()
    zones = doc.get("zones") if isinstance(doc, dict) else None
    if isinstance(zones, list):
        for z in zones:
            if not isinstance(z, dict):
                continue
            for loc in [z.get("s3")] + list(z.get("replicas") or []):
                if isinstance(loc, dict) and isinstance(loc.get("bucket"), str):
                    out.add(loc["bucket"])
    return out


def seed_manifest(root, rel, sample):
    """Copies the sample beside the manifest and lists it there, sources relative."""
    manifest = root / rel
    manifest.parent.mkdir(parents=True, exist_ok=True)
    dest = manifest.parent / "sample"
    if not dest.exists():
        shutil.copytree(sample, dest)
    lines = []
    for f in sorted(dest.rglob("*")):
        if f.is_file():
            uid = f.relative_to(dest).as_posix()
            lines.append(json.dumps({"uid": uid, "created_at": SAMPLE_CREATED_AT,
                                     "source": f.relative_to(manifest.parent).as_posix()}))
    manifest.write_text("\n".join(lines) + "\n")
    for p in [root] + [q for q in root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--dockerfile", default="Dockerfile")
    ap.add_argument("--image-name", default="des", help="repository name of the image the Dockerfile builds")
    ap.add_argument("--k8s", action="append", default=[], metavar="NAME=RENDERED.yaml")
    ap.add_argument("--compose", action="append", default=[])
    ap.add_argument("--sample", default="deploy/sample")
    default_garage = os.environ.get("GARAGE_BIN") or shutil.which("garage") or \
        str(Path.home() / ".cargo/bin/garage")
    ap.add_argument("--garage", default=default_garage if Path(default_garage).is_file() else None)
    ap.add_argument("--garage-setup", default="deploy/garage/setup.py")
    args = ap.parse_args()
    # A SIGTERM (a CI timeout) still stops the servers and containers started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    image = Image(args.dockerfile)
    image.name = args.image_name
    image.path = args.dockerfile
    print(f"manifests: image {args.dockerfile}: {image.base}, "
          f"{'a shell' if image.has_shell else 'no shell'}, binaries "
          f"{', '.join(sorted(image.binaries.values()))}; running them from {args.bin_dir}")
    runner = Runner(args, image)
    work = Path(args.work).resolve()
    count = 0
    for spec in args.k8s:
        name, _, path = spec.partition("=")
        objects = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        containers = []
        for o in objects:
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"):
                containers += pod_containers(name, o, objects, image)
        for c in containers:
            spec_c = c.k8s[0]
            cmd = list(spec_c.get("command") or image.entrypoint) + list(spec_c.get("args") or [])
            writes = cmd and os.path.basename(cmd[0]) == "des-pack"
            c.order = 2 if c.long_running else (0 if writes else 1)
        runner.run_set(name, containers, work / re.sub(r"[^\w.-]+", "_", name))
        count += sum(len(c.runs) for c in containers)
    for path in args.compose:
        notes = set()
        containers = compose_containers(path, image, notes)
        for n in sorted(notes):
            print(f"    note: {path}: {n}")
        runner.run_set(path, containers, work / re.sub(r"[^\w.-]+", "_", path))
        count += len(containers)
    if runner.failed:
        sys.exit(f"manifests: {runner.failed} of {count} containers failed")
    print(f"manifests: all {count} containers pass (or are not the DES image)")


if __name__ == "__main__":
    main()
