#!/usr/bin/env python3
"""RSS per idle client connection, HTTP/1 keep-alive and HTTP/2, plain and forward-proxy
listeners, on 127.0.0.1.

Starts the proxy binary (argv[1], default target/release/scp-auth-proxy) with a config that
needs no upstream (every request is answered by the proxy itself: `404 no_route`, `403` on
the forward listener, `502` inside a tunnel), opens N
connections that each make one request and then stay idle, and reads VmRSS from
/proc/PID/status before, during, and 10 s after closing them. Each protocol gets a fresh
process; each N is one burst in it, in order (so `5000 5000 5000` shows whether repeated
bursts plateau). Bounded: at most 20,000 connections, every wait has a deadline, the proxy
is killed by PID at the end. The environment is passed on (LD_PRELOAD, MALLOC_CONF, ...).

    python3 scripts/idle-rss.py [BINARY] [MODE] [N ...]   (default: both 2000 5000)

MODE: h1, h1post, h2, fwd, fwdpost, tunnel (see below), both (h1 h2) or all.
"""
import json
import os
import resource
import socket
import subprocess
import sys
import ssl
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/scp-auth-proxy"
# h1post: HTTP/1 whose one request is a POST with a 100-byte body (answered by the proxy
# without an upstream: hyper reads the rest of the body). fwd / fwdpost: the same on the
# forward-proxy listener, as absolute-form requests for an authority it does not intercept
# (403, answered by the proxy). tunnel: CONNECT to the intercepted host, TLS inside the
# tunnel, one request in it (502: the upstream is a closed port), then idle.
MODES = {"both": ["h1", "h2"], "all": ["h1", "h1post", "h2", "fwd", "fwdpost", "tunnel"]}
PROTOS = (lambda m: MODES.get(m, [m]))(sys.argv[2] if len(sys.argv) > 2 else "both")
assert all(p in ["h1", "h1post", "h2", "fwd", "fwdpost", "tunnel"] for p in PROTOS), PROTOS
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
intercept = ["virtualserver.kr-west1.e.samsungsdscloud.com:443"]
[forward_proxy]
listen = "127.0.0.1:0"
"""
VS_HOST = "virtualserver.kr-west1.e.samsungsdscloud.com"

H1_REQUEST = b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n"
H1_POST = b"POST /nope HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + b"x" * 100
FWD_REQUEST = b"GET http://example.com/nope HTTP/1.1\r\nhost: example.com\r\n\r\n"
FWD_POST = (b"POST http://example.com/nope HTTP/1.1\r\nhost: example.com\r\n"
            b"content-length: 100\r\n\r\n" + b"x" * 100)
CONNECT = f"CONNECT {VS_HOST}:443 HTTP/1.1\r\nhost: {VS_HOST}:443\r\n\r\n".encode()
TUNNELLED = f"GET /v1/servers HTTP/1.1\r\nhost: {VS_HOST}\r\n\r\n".encode()
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
    addrs = None
    deadline = time.time() + 30
    while addrs is None and time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if b'"serving"' in line:
            v = json.loads(line)
            v = v.get("fields", v)
            addrs = {}
            for key in ["addr", "forward_addr"]:
                host, port = v[key].rsplit(":", 1)
                addrs[key] = (host, int(port))
    if addrs is None:
        proc.kill()
        proc.wait()
        raise RuntimeError("proxy did not start")
    # Left unread, the pipe would fill and block the proxy's logging.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, addrs


def open_one(addrs, mode):
    """One connection that has made its one request and read the answer."""
    fwd = mode in ("fwd", "fwdpost", "tunnel")
    s = socket.create_connection(addrs["forward_addr" if fwd else "addr"])
    if mode == "tunnel":
        s.sendall(CONNECT)
        read_answer(s, False)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname=VS_HOST)
        s.sendall(TUNNELLED)
        read_answer(s, False)
        return s
    s.sendall({"h1": H1_REQUEST, "h1post": H1_POST, "h2": H2_REQUEST, "fwd": FWD_REQUEST,
               "fwdpost": FWD_POST}[mode])
    read_answer(s, mode == "h2")
    return s


def run(tmp, mode):
    proc, addrs = start(tmp)
    try:
        # Warm up: allocator arenas, the runtime, the first requests.
        for _ in range(3):
            open_one(addrs, mode).close()
        time.sleep(1)
        for n in COUNTS:
            before = rss_kib(proc.pid)
            socks = [open_one(addrs, mode) for _ in range(n)]
            time.sleep(2)
            during = rss_kib(proc.pid)
            for s in socks:
                s.close()
            time.sleep(10)
            after = rss_kib(proc.pid)
            print(
                f"{mode} n={n}: RSS before {before / 1024:.1f} MiB, "
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
    for mode in PROTOS:
        run(tmp, mode)


if __name__ == "__main__":
    main()
