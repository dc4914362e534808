#!/usr/bin/env python3
"""Instructions per proxied request under callgrind: repeatable on a busy machine.

Starts a fast upstream on 127.0.0.1 (in this process: 202 and `{"status":"accepted"}`, HTTP/1.1
keep-alive), the proxy binary (argv[1], default target/release/scp-auth-proxy) under
`nice -n 10 valgrind --tool=callgrind` with the peer bench's configuration for target E (access
log on, to a file), and one keep-alive client connection. For each kind (the bench's GET
`/v1/images?limit=10` and its POST image import): WARMUP requests, `callgrind_control --zero`,
N requests, `callgrind_control --dump`; so each dump holds only those N requests. Prints
instructions per request and writes the dumps (`callgrind_annotate --inclusive=yes FILE`).
Bounded: N <= 5000, every wait has a deadline, the proxy is killed by PID at the end.

Reading the numbers: the stack's share (`TraceFuture` inclusive in
`callgrind_annotate --inclusive=yes get.callgrind`) repeats to within ~1%; the connection task's
share varies with how the client's bytes arrive between reads (about +-5% of a GET's total since
HTTP/1 is served per burst), so compare a change inside the stack by its functions, and totals
over two runs. sha2's `soft::compress` stands in for SHA-NI under valgrind, which lacks it.

`--tls`: the upstream speaks HTTPS instead (Python's ssl with the test CA's `localhost`
certificate in tests/fixtures/tls, trusted through the service's `ca_file`), as SCP does; the
proxy's connection to it is kept alive, so the handshake falls in the warm-up and the counts are
the record layer's cost per request (seal, open, buffers) on top of the plain mode's.
`--response-kib K` pads the upstream's answer to about K KiB (a JSON list, as a real listing is
larger than 22 bytes), in either mode.
`--mangled`: symbol names as the linker sees them (valgrind's `--demangle=no`), and the start-up
and each kind's warm-up are kept in OUT_DIR/KIND-startup.callgrind instead of being zeroed, so the dumps
together hold every function the binary ran (scripts/symbol-order.py reads them).

    python3 scripts/callgrind.py [--tls] [--response-kib K] [--mangled] [BINARY] [N] [OUT_DIR]
                                              (default N: 300, OUT_DIR: temp)
"""
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from benchkit import free_port, proxy_env, write_target_e_config


def _options(argv):
    """Takes `--tls`, `--mangled` and `--response-kib K` out of argv; the rest stays positional."""
    tls, mangled, kib, rest = False, False, 0, []
    it = iter(argv)
    for arg in it:
        if arg == "--tls":
            tls = True
        elif arg == "--mangled":
            mangled = True
        elif arg == "--response-kib":
            kib = int(next(it))
        else:
            rest.append(arg)
    return tls, mangled, kib, rest


TLS, MANGLED, RESPONSE_KIB, _ARGS = _options(sys.argv[1:])
BIN = _ARGS[0] if len(_ARGS) > 0 else "target/release/scp-auth-proxy"
N = int(_ARGS[1]) if len(_ARGS) > 1 else 300
OUT = _ARGS[2] if len(_ARGS) > 2 else tempfile.mkdtemp(prefix="callgrind-")
WARMUP = 30
assert 0 < N <= 5000 and 0 <= RESPONSE_KIB <= 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tls")
IMAGE = "70a599e0-31e7-49b7-b260-868f441e862b"
IMPORT_BODY = (
    b'{"url":"https://object-store.kr-west1.e.samsungsdscloud.com/bench-bucket/bench-image.qcow2"}'
)
REQUESTS = {
    "get": ("GET", "/v1/images?limit=10", None, {}),
    "post": ("POST", f"/v1/images/{IMAGE}/import", IMPORT_BODY, {"Content-Type": "application/json"}),
}


def answer_bytes(kib=0):
    """The upstream's 202: `{"status":"accepted"}`, or with `kib` > 0 that padded by a list of
    items to about `kib` KiB."""
    body = b'{"status":"accepted"}\n'
    if kib > 0:
        item = b'{"id":"%s","name":"bench-image","state":"active"}' % IMAGE.encode()
        items = b",".join([item] * max(1, kib * 1024 // (len(item) + 1)))
        body = b'{"status":"accepted","images":[' + items + b"]}\n"
    head = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


def tls_context():
    """The upstream's server side: the test CA's `localhost` certificate, HTTP/1.1 by ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(FIXTURES, "server.pem"), os.path.join(FIXTURES, "server.key"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def upstream(listener, tls=None, answer=None):
    """Answers every request on every connection with 202, reading its body (length or chunked).
    `tls`: an ssl.SSLContext to serve HTTPS with (the handshake runs in the connection's thread)."""
    answer = answer or answer_bytes()

    def serve(conn):
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            f = conn.makefile("rb")
            while True:
                head = []
                line = f.readline()
                if not line:
                    return
                while line not in (b"\r\n", b""):
                    head.append(line.lower())
                    line = f.readline()
                length = next((int(h.split(b":")[1]) for h in head if h.startswith(b"content-length:")), 0)
                if any(h.startswith(b"transfer-encoding:") and b"chunked" in h for h in head):
                    while True:
                        size = int(f.readline().split(b";")[0], 16)
                        f.read(size + 2)
                        if size == 0:
                            break
                else:
                    f.read(length)
                conn.sendall(answer)
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            return
        finally:
            conn.close()

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def send(conn, request, count):
    """Sends one of REQUESTS' values `count` times on `conn`, each answered 202 and read."""
    method, path, body, headers = request
    for _ in range(count):
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 202, f"{method} {path}: status {r.status}"


def start_upstream(tls=False, answer=None):
    """The 202 upstream on a free 127.0.0.1 port, in a thread; returns its listening socket."""
    up = socket.socket()
    up.bind(("127.0.0.1", 0))
    up.listen(64)
    threading.Thread(target=upstream, args=(up, tls_context() if tls else None, answer),
                     daemon=True).start()
    return up


def proxy_config(out, port, admin, up_port, tls=False):
    """Target E's configuration in `out`, for the upstream on `up_port` (HTTPS with `tls`,
    trusted through the test CA)."""
    if tls:
        ca = os.path.join(FIXTURES, "ca.pem")
        return write_target_e_config(out, port, admin, f"https://localhost:{up_port}",
                                     service_extra=f'ca_file = "{ca}"')
    return write_target_e_config(out, port, admin, f"http://127.0.0.1:{up_port}")


def main():
    os.makedirs(OUT, exist_ok=True)
    answer = answer_bytes(RESPONSE_KIB)
    up = start_upstream(TLS, answer)
    port, admin = free_port(), free_port()
    config = proxy_config(OUT, port, admin, up.getsockname()[1], TLS)
    print(f"upstream: {'https' if TLS else 'http'}, {len(answer)}-byte answer", flush=True)
    env = proxy_env()
    log = open(os.path.join(OUT, "proxy.log"), "wb")
    proxy = subprocess.Popen(
        ["nice", "-n", "10", "valgrind", "--tool=callgrind", "--vgdb=yes",
         *(["--demangle=no"] if MANGLED else []),
         f"--callgrind-out-file={OUT}/callgrind.out.%p", BIN, "--config", config],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120
        while True:
            assert proxy.poll() is None, "proxy exited; see proxy.log"
            assert time.time() < deadline, "proxy did not listen within 120 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        for kind, request in REQUESTS.items():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            send(conn, request, WARMUP)
            if MANGLED:
                before = set(os.listdir(OUT))
                control("--dump", proxy.pid)
                os.rename(wait_new_dump(before), os.path.join(OUT, f"{kind}-startup.callgrind"))
            else:
                control("--zero", proxy.pid)
            send(conn, request, N)
            before = set(os.listdir(OUT))
            control("--dump", proxy.pid)
            dump = wait_new_dump(before)
            conn.close()
            total = total_ir(dump)
            final = os.path.join(OUT, f"{kind}.callgrind")
            os.rename(dump, final)
            print(f"{kind}: {total} instructions / {N} requests = {total // N} per request  ({final})")
    finally:
        proxy.kill()
        proxy.wait(timeout=30)
        up.close()


def control(flag, pid):
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)


def wait_new_dump(before):
    deadline = time.time() + 60
    while time.time() < deadline:
        new = [f for f in set(os.listdir(OUT)) - before if f.startswith("callgrind.out.")]
        if new:
            path = os.path.join(OUT, new[0])
            time.sleep(0.5)  # let callgrind finish writing it
            if "totals:" in open(path).read():
                return path
        time.sleep(0.2)
    raise AssertionError("no callgrind dump within 60 s")


def total_ir(path):
    with open(path) as f:
        m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    return int(m.group(1))


if __name__ == "__main__":
    main()
