#!/usr/bin/env python3
"""Idle memory of the proxy binary after start, and its size: what each pod pays before traffic.

For each binary given (default target/release/scp-auth-proxy): starts it ROUNDS times with the
peer bench's configuration for target E (access log on, a local 202 upstream in this process,
as scripts/callgrind.py does), waits for `/readyz` to answer 200, lets it idle IDLE seconds, and
reads VmRSS, RssAnon and RssFile from /proc/PID/status; then sends 100 GETs and 100 image-import
POSTs on one keep-alive connection, idles again and reads them once more ("after traffic").
Prints the medians and the binary's size. RssFile is mostly the binary's code pages that were
touched, so it follows the binary's size and layout; RssAnon is heap, stacks and runtime.

Each start is cold, as in a new pod: the binary's pages are dropped from the page cache first
(posix_fadvise DONTNEED). RssFile depends on how the file's pages came into the cache: the same
binary measured 7.1 to 8.1 MiB warm, after being written with 4 KiB or 1 MiB writes (the kernel's
page-cache folios, and so what a fault maps around it, differ), and 7.0-7.2 cold either way.
`--warm` skips the drop.

`--cpu N` pins the proxy to CPU N with taskset (one CPU: the current-thread runtime, as the bench
runs it); without it, the proxy sees every CPU. Bounded: every wait has a deadline, each proxy is
killed by PID.

    python3 scripts/footprint.py [--rounds 3] [--idle 3] [--cpu N] [--warm] [BINARY ...]
"""
import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from importlib import import_module  # noqa: E402

# The upstream and the requests are callgrind.py's, so both scripts measure the same traffic.
# It reads its arguments when imported: give it neutral ones (nothing is created or run).
_argv, sys.argv = sys.argv, [sys.argv[0], "-", "1", tempfile.gettempdir()]
cg = import_module("callgrind")
from benchkit import proxy_env, write_target_e_config  # noqa: E402
sys.argv = _argv

FIELDS = ("VmRSS", "RssAnon", "RssFile")


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0])
    return out


def write_config(tmp, port, admin, upstream_port):
    return write_target_e_config(tmp, port, admin, f"http://127.0.0.1:{upstream_port}")


def ready(admin):
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
        c.request("GET", "/readyz")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def drop_cached(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages (a binary just written) are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one(binary, upstream_port, idle, cpu, warm):
    if not warm:
        drop_cached(binary)
    tmp = tempfile.mkdtemp(prefix="footprint-")
    port, admin = cg.free_port(), cg.free_port()
    config = write_config(tmp, port, admin, upstream_port)
    env = proxy_env()
    argv = [binary, "--config", config]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    log = open(os.path.join(tmp, "proxy.log"), "wb")
    proxy = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 30
        while not ready(admin):
            assert proxy.poll() is None, f"proxy exited; see {tmp}/proxy.log"
            assert time.time() < deadline, "proxy not ready within 30 s"
            time.sleep(0.1)
        time.sleep(idle)
        start = status(proxy.pid)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for request in cg.REQUESTS.values():
            cg.send(conn, request, 100)
        conn.close()
        time.sleep(idle)
        return start, status(proxy.pid)
    finally:
        proxy.kill()
        proxy.wait(timeout=30)


def mib(kib):
    return f"{kib / 1024:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--cpu", type=int)
    ap.add_argument("--warm", action="store_true")
    ap.add_argument("binaries", nargs="*", default=["target/release/scp-auth-proxy"])
    a = ap.parse_args()
    assert 0 < a.rounds <= 20 and 0 <= a.idle <= 60
    up = socket.socket()
    up.bind(("127.0.0.1", 0))
    up.listen(64)
    threading.Thread(target=cg.upstream, args=(up,), daemon=True).start()
    print("binary | size MB | idle VmRSS | RssAnon | RssFile | after traffic VmRSS | RssAnon | RssFile (MiB, medians)")
    for b in a.binaries:
        runs = [one(b, up.getsockname()[1], a.idle, a.cpu, a.warm) for _ in range(a.rounds)]
        med = lambda i, k: statistics.median(r[i][k] for r in runs)  # noqa: E731
        cells = [mib(med(0, k)) for k in FIELDS] + [mib(med(1, k)) for k in FIELDS]
        print(f"{b} | {os.path.getsize(b) / 1e6:.2f} | " + " | ".join(cells), flush=True)
    up.close()


if __name__ == "__main__":
    main()
