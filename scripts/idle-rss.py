#!/usr/bin/env python3
"""RSS per idle client connection, HTTP/1 keep-alive and HTTP/2, on 127.0.0.1.

Starts the proxy binary (argv[1], default target/release/scp-auth-proxy) with a config that
needs no upstream (every request is answered `404 no_route` by the proxy itself), opens N
connections that each make one request and then stay idle, and reads VmRSS from
/proc/PID/status before, during, and 10 s after closing them. Each protocol gets a fresh
process; each N is one burst in it, in order (so `5000 5000 5000` shows whether repeated
bursts plateau). Bounded: at most 20,000 connections, every wait has a deadline, the proxy
is killed by PID at the end. The environment is passed on (LD_PRELOAD, MALLOC_CONF, ...).

    python3 scripts/idle-rss.py [BINARY] [h1|h2|both] [N ...]   (default: both 2000 5000)
"""
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/scp-auth-proxy"
PROTOS = {"h1": [False], "h2": [True], "both": [False, True]}[
    sys.argv[2] if len(sys.argv) > 2 else "both"]
COUNTS = [int(a) for a in sys.argv[3:]] or [2000, 5000]
assert all(0 < n <= 20000 for n in COUNTS)

CONFIG = """
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
check_live_versions = false
idle_timeout = "600s"
header_read_timeout = "600s"
[credentials]
access_key = "rss-access-key"
[services.virtualserver]
upstream = "http://127.0.0.1:9"
api_version = "1.3"
region = "kr-west1"
"""

H1_REQUEST = b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n"
# HTTP/2 prior knowledge: preface, empty SETTINGS, then HEADERS (stream 1, END_STREAM |
# END_HEADERS) with :method GET, :scheme http, :path /nope, :authority x (HPACK by hand).
_block = bytes([0x82, 0x86, 0x44, 5]) + b"/nope" + bytes([0x41, 1]) + b"x"
H2_REQUEST = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    + len(_block).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + _block
)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def read_answer(s, h2):
    """Reads until the answer is complete (h1: head + content-length; h2: a DATA frame with
    END_STREAM, after the server's SETTINGS and our ACK of them)."""
    s.settimeout(5)
    buf = b""
    deadline = time.time() + 5
    while time.time() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed early")
        buf += chunk
        if not h2:
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if len(body) >= length:
                    return
        else:
            # Whole frames only, each looked at once (a second SETTINGS ACK would be a
            # protocol error).
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                ln = int.from_bytes(buf[:3], "big")
                typ, flags = buf[3], buf[4]
                buf = buf[9 + ln:]
                if typ == 4 and not flags & 1:
                    s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # SETTINGS ACK
                if typ == 0 and flags & 1:
                    return
    raise RuntimeError("no answer")


def start(tmp):
    cfg = os.path.join(tmp, "p.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    env = dict(os.environ, SCP_SECRET_KEY="rss-secret", RUST_LOG="warn,scp_auth_proxy=info")
    proc = subprocess.Popen(
        [BIN, "--config", cfg, "--log-format", "json"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    addr = None
    deadline = time.time() + 30
    while addr is None and time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if b'"serving"' in line:
            v = json.loads(line)
            host, port = (v.get("addr") or v["fields"]["addr"]).rsplit(":", 1)
            addr = (host, int(port))
    if addr is None:
        proc.kill()
        proc.wait()
        raise RuntimeError("proxy did not start")
    return proc, addr


def run(tmp, h2):
    proc, addr = start(tmp)
    try:
        # Warm up: allocator arenas, the runtime, the first requests.
        for _ in range(3):
            with socket.create_connection(addr) as s:
                s.sendall(H2_REQUEST if h2 else H1_REQUEST)
                read_answer(s, h2)
        time.sleep(1)
        for n in COUNTS:
            before = rss_kib(proc.pid)
            socks = []
            for _ in range(n):
                s = socket.create_connection(addr)
                s.sendall(H2_REQUEST if h2 else H1_REQUEST)
                read_answer(s, h2)
                socks.append(s)
            time.sleep(2)
            during = rss_kib(proc.pid)
            for s in socks:
                s.close()
            time.sleep(10)
            after = rss_kib(proc.pid)
            print(
                f"{'h2' if h2 else 'h1'} n={n}: RSS before {before / 1024:.1f} MiB, "
                f"during {during / 1024:.1f} MiB, 10 s after closing {after / 1024:.1f} MiB; "
                f"{(during - before) * 1024 / n:.0f} B per idle connection, "
                f"{(after - before) / 1024:+.1f} MiB left after",
                flush=True)
    finally:
        proc.kill()
        proc.wait()


def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    tmp = tempfile.mkdtemp()
    for h2 in PROTOS:
        run(tmp, h2)


if __name__ == "__main__":
    main()
