#!/usr/bin/env python3
"""One-shot initialisation of a single-node Garage for docker-compose.yml.

Through Garage's admin API (v2, Garage >= 2.0), idempotently:
  1. waits until the admin API answers;
  2. gives the node a role in the cluster layout and applies it (first run only);
  3. imports the access key DES uses (fixed id/secret from the environment);
  4. creates the bucket and lets the key read, write and own it.

Standard library only, so it runs in a stock python image. Settings come from
the environment:
  GARAGE_ADMIN_URL      e.g. http://garage:3903
  GARAGE_ADMIN_TOKEN    the node's admin token
  DES_S3_ACCESS_KEY     GK + 24 hex digits
  DES_S3_SECRET_KEY     64 hex digits
  DES_S3_BUCKET         bucket name (default: des)
  GARAGE_CAPACITY       bytes given to the node in the layout (default: 10 GB)
  GARAGE_SETUP_TIMEOUT  seconds to wait for the admin API (default: 120)
Exits 0 when everything is in place, 1 otherwise (with the reason on stderr).
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ADMIN = os.environ.get("GARAGE_ADMIN_URL", "http://garage:3903").rstrip("/")
TOKEN = os.environ["GARAGE_ADMIN_TOKEN"]
ACCESS_KEY = os.environ["DES_S3_ACCESS_KEY"]
SECRET_KEY = os.environ["DES_S3_SECRET_KEY"]
BUCKET = os.environ.get("DES_S3_BUCKET", "des")
CAPACITY = int(os.environ.get("GARAGE_CAPACITY", str(10 * 1000**3)))
TIMEOUT = float(os.environ.get("GARAGE_SETUP_TIMEOUT", "120"))


class ApiError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status


def call(method, endpoint, body=None, **query):
    url = f"{ADMIN}/v2/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as e:
        raise ApiError(e.code, e.read().decode(errors="replace")) from None
    return json.loads(text) if text.strip() else None


def log(msg):
    print(f"garage-setup: {msg}", flush=True)


def wait_for_api():
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return call("GET", "GetClusterStatus")
        except (OSError, ApiError) as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"garage-setup: admin API at {ADMIN} not ready: {e}")
            time.sleep(1)


def ensure_layout(status):
    nodes = status["nodes"]
    if any(n.get("role") for n in nodes):
        log(f"layout already applied (version {status['layoutVersion']})")
        return
    if len(nodes) != 1:
        raise SystemExit(f"garage-setup: expected one node, found {len(nodes)}")
    node = nodes[0]["id"]
    call(
        "POST",
        "UpdateClusterLayout",
        {"roles": [{"id": node, "zone": "dc1", "capacity": CAPACITY, "tags": ["des"]}]},
    )
    version = call("GET", "GetClusterLayout")["version"] + 1
    call("POST", "ApplyClusterLayout", {"version": version})
    log(f"layout version {version} applied: node {node[:16]} in zone dc1")


def ensure_key():
    try:
        call("GET", "GetKeyInfo", id=ACCESS_KEY)
        log(f"key {ACCESS_KEY} already present")
    except ApiError as e:
        if e.status not in (400, 404):
            raise
        call(
            "POST",
            "ImportKey",
            {"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY, "name": "des"},
        )
        log(f"key {ACCESS_KEY} imported")


def ensure_bucket():
    try:
        bucket = call("GET", "GetBucketInfo", globalAlias=BUCKET)
        log(f"bucket {BUCKET} already present")
    except ApiError as e:
        if e.status not in (400, 404):
            raise
        bucket = call("POST", "CreateBucket", {"globalAlias": BUCKET})
        log(f"bucket {BUCKET} created")
    call(
        "POST",
        "AllowBucketKey",
        {
            "bucketId": bucket["id"],
            "accessKeyId": ACCESS_KEY,
            "permissions": {"read": True, "write": True, "owner": True},
        },
    )
    log(f"key {ACCESS_KEY} may read, write and own bucket {BUCKET}")


def main():
    ensure_layout(wait_for_api())
    # Keys and buckets need the layout to be live on the node; retry briefly.
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            ensure_key()
            ensure_bucket()
            return 0
        except ApiError as e:
            if time.monotonic() > deadline:
                print(f"garage-setup: {e}", file=sys.stderr)
                return 1
            log(f"retrying: {e}")
            time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
