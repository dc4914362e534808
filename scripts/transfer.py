#!/usr/bin/env python3
"""Large transfers through the proxy: throughput against a direct transfer, and the proxy's memory.

Starts a streaming upstream on 127.0.0.1 (this script in `--upstream` mode, its own process so
that it and the client do not share a GIL), the release proxy in front of it (`PROXY_BIN`, else
target/release/scp-auth-proxy, built with `cargo build --release` when missing) with the access
log on (to a file), and a raw-socket client. Each transfer moves SIZE bytes of a repeated random
1 MiB block:

- upload-cl: POST /v1/upload with content-length; upload-chunked: PUT /v1/upload, chunked
  (1 MiB chunks). The upstream counts the body and its CRC-32 and answers them in JSON.
- download-cl: GET /v1/download?bytes=N with content-length; download-chunked: the upstream
  answers chunked. The client counts and CRC-32s what arrives.

Each kind runs direct (client -> upstream) and proxied (client -> proxy -> upstream), interleaved,
ROUNDS times; medians are reported with their ratio and the proxy's CPU time per GiB (from
/proc/PID/task/*/schedstat; steadier than throughput on a busy machine), and every transfer's
byte count and CRC-32 are checked. The proxy's VmHWM (peak RSS, /proc/PID/status) is read after
a warm-up, before the first large transfer, and after each one. `--tls` adds the same set
against an HTTPS upstream (the test CA in tests/fixtures/tls, trusted through the service's
`ca_file`); its direct baseline is the client speaking TLS to the upstream itself. `--nginx` adds
nginx as a plain streaming reverse proxy in front of the same upstream: what an unsigned proxy
costs, for reference.

Sender and receiver do the same work in both paths (the receiver's CRC-32 runs at ~4 GB/s here;
`--no-verify` drops it and checks only the byte count), so the ratio is the proxy's cost. Bounded:
SIZE <= 4 GiB, every socket operation has a timeout, the whole run a deadline; every process it
starts is killed by PID at the end. 127.0.0.1 only.

Reading the numbers: on loopback a direct transfer is two kernel copies (the sender's into the
socket, the receiver's out of it), one per core; a proxy adds two more and a wake-up per read,
and on a 2-CPU machine three busy processes share the two cores. So with a receiver that only
counts (`--no-verify`, ~10 GB/s direct here) no copying proxy comes near the direct rate (nginx
with buffering off neither); with the default receiver, which touches every byte as an
application would, the ratio shows whether the proxy slows the transfer down. With `--tls` the
direct baseline is Python's TLS at both ends, the proxied one at one end only, so a proxied
rate above the direct one is that baseline's limit, not a gain. Proxy CPU per GiB and VmHWM are
the figures that compare across runs on a busy machine; throughput repeats only on a quiet one.

    python3 scripts/transfer.py [--size-mib 1024] [--rounds 3] [--tls | --upstreams tls]
        [--only KIND,...] [--no-verify] [--nginx] [--pin CPU] [--server 'KEY = VALUE']
"""
import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tls")
BLOCK = 1 << 20
KINDS = ["upload-cl", "upload-chunked", "download-cl", "download-chunked"]
IO_TIMEOUT = 60


def pattern():
    """The 1 MiB block every transfer repeats (fixed seed: the same bytes in both processes)."""
    import random
    return random.Random(12).randbytes(BLOCK)


def expected_crc(size, block):
    crc, left = 0, size
    while left:
        n = min(left, len(block))
        crc = zlib.crc32(memoryview(block)[:n], crc)
        left -= n
    return crc


class Conn:
    """A socket with a small read-ahead buffer: lines come from it, body bytes go from the
    kernel straight into one reused 1 MiB buffer (no copies beyond the read-ahead)."""

    def __init__(self, sock):
        self.sock = sock
        self.ahead = bytearray()
        self.big = memoryview(bytearray(BLOCK))

    def readline(self):
        while True:
            i = self.ahead.find(b"\n")
            if i >= 0:
                line = bytes(self.ahead[: i + 1])
                del self.ahead[: i + 1]
                return line
            chunk = self.sock.recv(16384)
            if not chunk:
                raise EOFError("connection closed")
            self.ahead += chunk

    def head(self):
        """(first line, {lower-case name: value}) of a message head."""
        first = self.readline().decode("latin-1").strip()
        fields = {}
        while True:
            line = self.readline()
            if line in (b"\r\n", b"\n"):
                return first, fields
            k, _, v = line.decode("latin-1").partition(":")
            fields[k.strip().lower()] = v.strip()

    def consume(self, n, sink):
        """Reads exactly n bytes, handing each piece to sink."""
        if self.ahead:
            take = min(n, len(self.ahead))
            sink(memoryview(self.ahead)[:take])
            del self.ahead[:take]
            n -= take
        while n:
            got = self.sock.recv_into(self.big, min(n, BLOCK))
            if not got:
                raise EOFError("connection closed mid-body")
            sink(self.big[:got])
            n -= got

    def body(self, fields, sink):
        """Reads a body framed by content-length or chunked; returns its length."""
        if "chunked" in fields.get("transfer-encoding", "").lower():
            total = 0
            while True:
                size = int(self.readline().split(b";")[0], 16)
                if size == 0:
                    while self.readline() not in (b"\r\n", b"\n"):  # trailers
                        pass
                    return total
                self.consume(size, sink)
                total += size
                self.readline()
        n = int(fields.get("content-length", "0"))
        self.consume(n, sink)
        return n


class Sum:
    def __init__(self, verify):
        self.n, self.crc, self.verify = 0, 0, verify

    def __call__(self, piece):
        self.n += len(piece)
        if self.verify:
            self.crc = zlib.crc32(piece, self.crc)


def send_body(sock, size, chunked, block):
    mv = memoryview(block)
    left = size
    if chunked:
        full = b"%x\r\n" % len(block) + block + b"\r\n"
        while left >= len(block):
            sock.sendall(full)
            left -= len(block)
        if left:
            sock.sendall(b"%x\r\n" % left + mv[:left].tobytes() + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        return
    while left:
        n = min(left, len(block))
        sock.sendall(mv[:n])
        left -= n


# ------------------------------------------------------------------ the upstream (own process)

def serve_upstream(verify):
    block = pattern()
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen(16)
    tls = socket.socket()
    tls.bind(("127.0.0.1", 0))
    tls.listen(16)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(FIXTURES, "server.pem"), os.path.join(FIXTURES, "server.key"))
    ctx.set_alpn_protocols(["http/1.1"])
    print(json.dumps({"plain": plain.getsockname()[1], "tls": tls.getsockname()[1]}), flush=True)

    def handle(sock):
        sock.settimeout(IO_TIMEOUT)
        c = Conn(sock)
        try:
            while True:
                try:
                    first, fields = c.head()
                except EOFError:
                    return
                method, target, _ = first.split(" ", 2)
                if target.startswith("/v1/download"):
                    size = int(target.split("bytes=")[1].split("&")[0])
                    chunked = "chunked=1" in target
                    c.body(fields, lambda _p: None)
                    framing = "transfer-encoding: chunked" if chunked else f"content-length: {size}"
                    sock.sendall(f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                                 f"{framing}\r\n\r\n".encode())
                    send_body(sock, size, chunked, block)
                else:
                    s = Sum(verify)
                    c.body(fields, s)
                    answer = json.dumps({"method": method, "bytes": s.n, "crc32": s.crc,
                                         "chunked": "transfer-encoding" in fields}).encode()
                    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n" % len(answer) + answer)
        except (OSError, EOFError, ValueError, ssl.SSLError) as e:
            print(f"upstream: connection ended: {e!r}", file=sys.stderr, flush=True)
        finally:
            sock.close()

    def accept(listener, wrap):
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def run(conn=conn):
                try:
                    sock = ctx.wrap_socket(conn, server_side=True) if wrap else conn
                except (OSError, ssl.SSLError):
                    conn.close()
                    return
                handle(sock)
            threading.Thread(target=run, daemon=True).start()

    threading.Thread(target=accept, args=(tls, True), daemon=True).start()
    accept(plain, False)


# ------------------------------------------------------------------ the client

def connect(port, tls):
    s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        ctx = ssl.create_default_context(cafile=os.path.join(FIXTURES, "ca.pem"))
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s, server_hostname="localhost")
    return s


def transfer(port, tls, kind, size, block, crc, verify, prefix=""):
    """One transfer on a fresh connection (paths under `prefix`: `/tls` picks the proxy's
    HTTPS service); returns seconds from the first byte sent to the last byte received.
    Raises when the count or the CRC-32 is wrong."""
    sock = connect(port, tls)
    c = Conn(sock)
    try:
        t = time.perf_counter()
        if kind.startswith("upload"):
            chunked = kind == "upload-chunked"
            framing = "transfer-encoding: chunked" if chunked else f"content-length: {size}"
            method = "PUT" if chunked else "POST"
            sock.sendall(f"{method} {prefix}/v1/upload HTTP/1.1\r\nhost: localhost\r\n"
                         f"content-type: application/octet-stream\r\n{framing}\r\n\r\n".encode())
            send_body(sock, size, chunked, block)
            first, fields = c.head()
            got = bytearray()
            c.body(fields, got.extend)
            took = time.perf_counter() - t
            assert " 200 " in first + " ", f"{kind}: {first} {bytes(got)[:300]!r}"
            v = json.loads(got)
            assert v["bytes"] == size, f"{kind}: upstream got {v['bytes']} of {size} bytes"
            assert v["chunked"] == chunked, f"{kind}: framing changed on the way: {v}"
            assert not verify or v["crc32"] == crc, f"{kind}: CRC-32 {v['crc32']:#x} != {crc:#x}"
        else:
            q = "&chunked=1" if kind == "download-chunked" else ""
            sock.sendall(f"GET {prefix}/v1/download?bytes={size}{q} HTTP/1.1\r\nhost: localhost\r\n\r\n"
                         .encode())
            first, fields = c.head()
            assert " 200 " in first + " ", f"{kind}: {first}"
            s = Sum(verify)
            c.body(fields, s)
            took = time.perf_counter() - t
            assert s.n == size, f"{kind}: got {s.n} of {size} bytes"
            assert not verify or s.crc == crc, f"{kind}: CRC-32 {s.crc:#x} != {crc:#x}"
        return took
    finally:
        sock.close()


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def cpu_seconds(pid):
    """CPU time a process's threads have used: the sum of /proc/PID/task/*/schedstat's
    on-CPU nanoseconds (utime + stime in clock ticks is too coarse for a second's work)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return total / 1e9


def timed_cpu(pid, run):
    """(seconds, CPU seconds of `pid`) of run()."""
    c = cpu_seconds(pid)
    took = run()
    return took, cpu_seconds(pid) - c


def wait_port(proc, port, what, within=30):
    deadline = time.time() + within
    while True:
        assert proc.poll() is None, f"{what} exited"
        assert time.time() < deadline, f"{what} did not listen within {within} s"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_binary():
    path = os.environ.get("PROXY_BIN") or os.path.join(ROOT, "target", "release", "scp-auth-proxy")
    if not os.path.exists(path):
        print(f"{path} missing: cargo build --release", flush=True)
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True, timeout=3600)
    return path


def start_proxy(binary, tmp, up_ports, pin, server_lines):
    port, admin = free_port(), free_port()
    secret = os.path.join(tmp, "secret")
    with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as s:
        s.write("transfer-bench-secret-0123456789\n")
    config = os.path.join(tmp, "proxy.toml")
    ca = os.path.join(FIXTURES, "ca.pem")
    with open(config, "w") as c:
        c.write(f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
check_live_versions = false
{server_lines}
[credentials]
access_key = "bench-ak"
secret_key_file = "{secret}"
account_id = "bench-account"
[routing]
default_service = "plain"
[services.plain]
upstream = "http://127.0.0.1:{up_ports['plain']}"
api_version = "1.3"
region = "kr-west1"
[services.tls]
upstream = "https://localhost:{up_ports['tls']}"
api_version = "1.3"
region = "kr-west1"
ca_file = "{ca}"
""")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SCP_PROXY_") and k not in ("SCP_SECRET_KEY", "RUST_LOG")}
    log = open(os.path.join(tmp, "proxy.log"), "wb")
    proc = subprocess.Popen(pin + [binary, "--config", config], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    wait_port(proc, port, "proxy")
    return proc, port


def start_nginx(tmp, up_ports, pin):
    """nginx as a plain streaming reverse proxy (no signing) in front of the same upstream:
    the peer bench's target B with request and response buffering off (else nginx would
    spool the body to disk) and 64 KiB buffers, the proxy's own read size. `/tls/...` goes to
    the HTTPS upstream."""
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    os.makedirs(os.path.join(tmp, "nginx"), exist_ok=True)
    ca = os.path.join(FIXTURES, "ca.pem")
    common = """proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 64k;"""
    with open(conf, "w") as c:
        c.write(f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx/body;
    proxy_temp_path {tmp}/nginx/proxy;
    fastcgi_temp_path {tmp}/nginx/fastcgi;
    uwsgi_temp_path {tmp}/nginx/uwsgi;
    scgi_temp_path {tmp}/nginx/scgi;
    client_max_body_size 0;
    client_body_buffer_size 64k;
    upstream plain {{ server 127.0.0.1:{up_ports['plain']}; keepalive 4; }}
    upstream tls {{ server 127.0.0.1:{up_ports['tls']}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location /tls/ {{
            proxy_pass https://tls/;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            {common}
        }}
        location / {{
            proxy_pass http://plain;
            {common}
        }}
    }}
}}
""")
    proc = subprocess.Popen(pin + ["nginx", "-c", conf, "-p", tmp],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "nginx.log"), "wb"))
    wait_port(proc, port, "nginx")
    return proc, port


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tls", action="store_true", help="also through an HTTPS upstream")
    ap.add_argument("--upstreams", help="plain, tls or plain,tls (overrides --tls)")
    ap.add_argument("--only", default=",".join(KINDS))
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--nginx", action="store_true",
                    help="also through nginx, a plain streaming reverse proxy (reference)")
    ap.add_argument("--pin", type=int, metavar="CPU",
                    help="run the proxy (and nginx) on this CPU only (taskset): one CPU makes "
                         "the proxy pick its current-thread runtime")
    ap.add_argument("--server", action="append", default=[], metavar="LINE",
                    help="a `key = value` line for the proxy's [server] (repeatable), e.g. "
                         "'max_header_bytes = 409600' to see hyper's read size (it is bounded by "
                         "that) at work")
    ap.add_argument("--deadline", type=int, default=900, help="seconds for the whole run")
    a = ap.parse_args()
    if a.upstream:
        serve_upstream(a.verify)
        return
    assert 0 < a.size_mib <= 4096 and 0 < a.rounds <= 10
    kinds = a.only.split(",")
    assert all(k in KINDS for k in kinds), f"kinds: {KINDS}"
    size = a.size_mib * BLOCK
    deadline = time.time() + a.deadline
    binary = proxy_binary()
    block = pattern()
    crc = expected_crc(size, block)
    tmp = tempfile.mkdtemp(prefix="transfer-")
    procs = []
    try:
        upstream = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--upstream"]
            + ([] if a.verify else ["--no-verify"]),
            stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, "upstream.log"), "wb"))
        procs.append(upstream)
        up_ports = json.loads(upstream.stdout.readline())
        pin = ["taskset", "-c", str(a.pin)] if a.pin is not None else []
        proxy, port = start_proxy(binary, tmp, up_ports, pin, "\n".join(a.server))
        procs.append(proxy)
        nginx_port = None
        if a.nginx:
            nginx, nginx_port = start_nginx(tmp, up_ports, pin)
            procs.append(nginx)
        else:
            nginx = None
        names = (a.upstreams or ("plain,tls" if a.tls else "plain")).split(",")
        assert all(n in ("plain", "tls") for n in names), "upstreams: plain, tls"
        modes = [(n, n == "tls") for n in names]
        # A warm-up through the proxy (small, every kind and upstream), so the first reading
        # holds the runtime, the connection machinery and the pools, not just the start.
        small = 1 << 16
        for svc, _ in modes:
            for kind in kinds:
                for p in [port] + ([nginx_port] if nginx_port else []):
                    transfer(p, False, kind, small, block, expected_crc(small, block), a.verify,
                             prefix(svc))
        hwm0, rss0 = status_kib(proxy.pid, "VmHWM"), status_kib(proxy.pid, "VmRSS")
        print(f"proxy {binary} pid {proxy.pid}{' on CPU %d' % a.pin if pin else ''}; "
              f"{a.size_mib} MiB per transfer, {a.rounds} rounds, "
              f"verify={'crc32' if a.verify else 'count only'}")
        print(f"proxy VmHWM before: {hwm0} kB (VmRSS {rss0} kB)", flush=True)
        results = {}
        for r in range(a.rounds):
            for svc, tls in modes:
                for kind in kinds:
                    assert time.time() < deadline, "run deadline passed"
                    d = transfer(up_ports[svc], tls, kind, size, block, crc, a.verify)
                    p, pc = timed_cpu(proxy.pid, lambda: transfer(
                        port, False, kind, size, block, crc, a.verify, prefix(svc)))
                    hwm = status_kib(proxy.pid, "VmHWM")
                    n, nc = timed_cpu(nginx.pid, lambda: transfer(
                        nginx_port, False, kind, size, block, crc, a.verify, prefix(svc))
                    ) if nginx_port else (None, None)
                    results.setdefault((svc, kind), []).append((d, p, pc, n, nc))
                    gib = size / (1 << 30)
                    also = (f"  nginx {size / n / 1e6:6.0f} MB/s ({d / n:5.1%}, "
                            f"{nc / gib:.2f} CPU-s/GiB)" if n else "")
                    print(f"round {r + 1} {svc:5} {kind:16} direct {size / d / 1e6:6.0f} MB/s  "
                          f"proxied {size / p / 1e6:6.0f} MB/s  ratio {d / p:5.1%}  "
                          f"proxy {pc / gib:.2f} CPU-s/GiB  VmHWM {hwm} kB{also}", flush=True)
        hwm1, rss1 = status_kib(proxy.pid, "VmHWM"), status_kib(proxy.pid, "VmRSS")
        print()
        gib = size / (1 << 30)
        extra = " nginx MB/s | nginx ratio | nginx CPU-s/GiB |" if nginx_port else ""
        print("| upstream | transfer | direct MB/s | proxied MB/s | ratio | proxy CPU-s/GiB |"
              + extra)
        print("|---|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if nginx_port else ""))
        med = statistics.median
        for (svc, kind), rows in results.items():
            d = med(size / x[0] / 1e6 for x in rows)
            p = med(size / x[1] / 1e6 for x in rows)
            line = f"| {svc} | {kind} | {d:.0f} | {p:.0f} | {p / d:.1%} | " \
                   f"{med(x[2] for x in rows) / gib:.2f} |"
            if nginx_port:
                n = med(size / x[3] / 1e6 for x in rows)
                line += f" {n:.0f} | {n / d:.1%} | {med(x[4] for x in rows) / gib:.2f} |"
            print(line)
        print(f"(medians of {a.rounds} rounds; ratio = proxied / direct)")
        print()
        print(f"proxy VmHWM before {hwm0} kB, after {hwm1} kB: growth {hwm1 - hwm0} kB "
              f"({(hwm1 - hwm0) / 1024:.2f} MiB); VmRSS before {rss0} kB, after {rss1} kB")
        print(f"every transfer: {size} bytes, {'CRC-32 ' + hex(crc) if a.verify else 'count'} "
              f"checked; proxy log {tmp}/proxy.log")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait(timeout=30)


def prefix(svc):
    """The path prefix that routes to a service (`plain` is the default service)."""
    return "" if svc == "plain" else f"/{svc}"


if __name__ == "__main__":
    main()
