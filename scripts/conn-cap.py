#!/usr/bin/env python3
"""The connection cap at the descriptor limit, on 127.0.0.1.

Starts the proxy binary (argv[1], default target/release/scp-auth-proxy) with RLIMIT_NOFILE
soft and hard at LIMIT (argv[2], default 1024) and a config that needs no upstream (every
request is answered `404 no_route` by the proxy itself), opens N connections (argv[3],
default 1100) that each send one request, and reports: how many were answered, how
/healthz on the admin listener answers meanwhile (5 tries, 3 s each), RSS, how many
accept-error and cap lines were logged, and whether the waiting connections are served once
some close. Bounded: every wait has a deadline, the proxy is killed by PID at the end.

    python3 scripts/conn-cap.py [BINARY] [LIMIT] [N]
"""
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/scp-auth-proxy"
LIMIT = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
N = int(sys.argv[3]) if len(sys.argv) > 3 else 1100
assert 0 < N <= 10000

CONFIG = """
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
check_live_versions = false
idle_timeout = "600s"
header_read_timeout = "600s"
[credentials]
access_key = "cap-access-key"
[services.virtualserver]
upstream = "http://127.0.0.1:9"
api_version = "1.3"
region = "kr-west1"
"""
REQUEST = b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def answered(socks, within):
    """Those of `socks` that got the start of an HTTP response within `within` seconds."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    got = set()
    deadline = time.time() + within
    while len(got) < len(socks) and time.time() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.time())):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 "):
                got.add(key.fileobj)
            sel.unregister(key.fileobj)
    sel.close()
    return got


def healthz(addr):
    t = time.time()
    try:
        with socket.create_connection(addr, timeout=3) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = s.recv(4096)
        return f"{data.split(b' ')[1].decode() if data else 'closed'} in {(time.time() - t) * 1000:.0f} ms"
    except OSError as e:
        return f"failed after {(time.time() - t) * 1000:.0f} ms ({e})"


def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (N + 4096, N + 4096))
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "p.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    env = dict(os.environ, SCP_SECRET_KEY="cap-secret", RUST_LOG="warn,scp_auth_proxy=info")
    proc = subprocess.Popen(
        [BIN, "--config", cfg, "--log-format", "json"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT)))
    lines = []
    ready = threading.Event()

    def pump():
        for line in proc.stderr:
            lines.append(line)
            if b'"serving"' in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(30), "proxy did not start"
        v = json.loads(next(l for l in lines if b'"serving"' in l))
        f = v.get("fields", v)
        print(f"serving: max_connections {f['max_connections']}, fd_limit {f['fd_limit']}")
        host, port = f["addr"].rsplit(":", 1)
        addr = (host, int(port))
        host, port = f["admin_addr"].rsplit(":", 1)
        admin_addr = (host, int(port))
        base_rss = rss_kib(proc.pid)
        socks = []
        unconnected = 0
        for _ in range(N):
            # Past the cap connections wait in the listen backlog; past that, the kernel
            # drops the SYN (the connect times out).
            try:
                s = socket.create_connection(addr, timeout=3 if not unconnected else 0.2)
            except OSError:
                unconnected += 1
                continue
            s.sendall(REQUEST)
            socks.append(s)
        print(f"  {len(socks)} connected, {unconnected} connects timed out (listen backlog full)")
        ok = answered(socks, 5)
        print(f"fd limit {LIMIT}: {N} connections opened, {len(ok)} answered within 5 s, "
              f"RSS {base_rss / 1024:.1f} -> {rss_kib(proc.pid) / 1024:.1f} MiB")
        for i in range(5):
            print(f"  /healthz #{i + 1}: {healthz(admin_addr)}")
        log = b"".join(lines)
        print(f"  log lines: accept failed {log.count(b'accept failed')}, "
              f"cap reached {log.count(b'connection cap reached')}")
        # Close the answered ones: the waiting ones must then be served, a cap's worth at
        # a time.
        waiting = [s for s in socks if s not in ok]
        for r in range(1, 6):
            if not waiting:
                break
            for s in ok:
                s.close()
            ok = answered(waiting, 5)
            print(f"  round {r}: closed the answered; {len(waiting)} waiting, "
                  f"{len(ok)} answered within 5 s")
            waiting = [s for s in waiting if s not in ok]
        for s in list(ok) + waiting:
            s.close()
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
