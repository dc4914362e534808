#!/usr/bin/env python3
"""The functions the proxy runs, hottest first, for the linker to place together.

Why: a function's first call faults its code page in, and the kernel maps the file's cached
pages around it too (fault-around, 64 KiB or a whole page-cache folio), so code that runs is
resident together with whatever the linker put next to it. In the default layout the proxy's
1.8 MB of code that runs is spread over 5.5 MB of `.text`, and 4-5 MiB of the binary end up
resident. `build.rs` hands `scripts/symbol-order.txt` to lld (`--symbol-ordering-file`) for
release builds, so those functions come first and the rest of `.text` is not touched.

    python3 scripts/symbol-order.py [BINARY ...]          writes scripts/symbol-order.txt
    python3 scripts/symbol-order.py --check [BINARY ...]  is each BINARY laid out by it?

BINARY defaults to both release builds: `cargo build --release`'s and the container image's
(glibc linked in statically, deploy/docker/Dockerfile). Their function names differ in the hash
that each mangled name ends with, so the list has a section per build and lld skips the names a
build does not have. The hashes depend on the toolchain, the locked dependency versions and the
build's settings (target, build script), and for an async function on what it holds across
its awaits (adding an await to serve_draining renamed serve's future); not on other source
edits or on the clone's path. After a toolchain or dependency update `--check` fails and the list is written
again, from both builds (the command prints them).

Writing: each BINARY runs under gdb with a breakpoint on each of its functions, each removed at
its first hit, from start-up through GETs (as http.client and as wrk send them), image-import
POSTs, the admin endpoints and idle pauses, with a plain and a TLS upstream: that is every
function that runs on this CPU for that traffic. It also runs under callgrind
(scripts/callgrind.py --mangled, the same two upstreams), whose instruction counts order the
list hottest first (start-up code, run once, after the request path). Functions that ran only
under valgrind, whose CPU lacks SHA-NI, VAES and AVX-512 (sha2's and ring's fallbacks), come
last. Needs gdb, valgrind and nm.

Checking: how many names of its section BINARY has, and whether its Rust functions among them
start its `.text` in the listed order; exit status 1 when fewer than 90% are present or they
are not placed first.
Bounded: every run has a deadline, every process it starts is killed by PID, 127.0.0.1 only.
"""
import argparse
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIST = os.path.join(HERE, "symbol-order.txt")
# The two release builds: `cargo build --release`, and the container image's (glibc linked in
# statically, deploy/docker/Dockerfile), whose function names hash differently.
DEFAULT_BINARIES = [os.path.join(ROOT, "target", "release", "scp-auth-proxy"),
                    os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release",
                                 "scp-auth-proxy")]
BUILDS = """    cargo build --release
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu"""
sys.path.insert(0, HERE)
from benchkit import free_port, proxy_env  # noqa: E402

# The upstream, the configuration and the requests are callgrind.py's, as in footprint.py.
# It reads its arguments when imported: give it neutral ones (nothing is created or run).
_argv, sys.argv = sys.argv, [sys.argv[0], "-", "1", tempfile.gettempdir()]
cg = __import__("callgrind")
sys.argv = _argv


def text_symbols(binary):
    """(address, size, name) of BINARY's functions, by address."""
    out = subprocess.run(["nm", "-S", "-n", binary], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            syms.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    return syms


def callgrind_costs(dumps, binary_name):
    """Self instructions per function of the binary, summed over callgrind dumps."""
    cost = Counter()
    for path in dumps:
        names, objects = {}, {}
        obj = fn = None
        after_calls = False
        with open(path) as f:
            for line in f:
                key, _, value = line.partition("=")
                if key in ("ob", "fn", "cob", "cfn", "fl", "fi", "fe", "cfi", "cfl"):
                    m = re.match(r"\((\d+)\)(?: (.*))?", value.strip())
                    if not m:
                        continue
                    table = objects if key in ("ob", "cob") else names
                    if m.group(2):
                        table[m.group(1)] = m.group(2)
                    if key == "ob":
                        obj = objects.get(m.group(1))
                    elif key == "fn":
                        fn, after_calls = names.get(m.group(1)), False
                elif line.startswith("calls="):
                    after_calls = True  # the next cost line is the call's inclusive cost
                elif line[:1].isdigit() or line[:1] in "+-*":
                    if after_calls:
                        after_calls = False
                        continue
                    parts = line.split()
                    if len(parts) >= 2 and fn and obj and os.path.basename(obj) == binary_name:
                        cost[fn] += int(parts[1])
    return cost


def callgrind_runs(binary, work):
    dumps = []
    for mode in ([], ["--tls"]):
        out = os.path.join(work, "callgrind" + "".join(mode))
        subprocess.run([sys.executable, os.path.join(HERE, "callgrind.py"), *mode, "--mangled",
                        binary, "200", out], check=True, timeout=1200,
                       stdout=subprocess.DEVNULL)
        dumps += [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".callgrind")]
    return dumps


GDB_SCRIPT = r"""
import gdb, os, subprocess
binary = gdb.current_progspace().filename
hits = open(os.environ["SYMBOL_ORDER_HITS"], "w", buffering=1)
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("handle SIGPIPE nostop noprint pass")
gdb.execute("starti")
base = next(int(l.split()[0], 16) for l in gdb.execute("info proc mappings", to_string=True).splitlines()
            if l.strip().endswith(binary))

class FirstCall(gdb.Breakpoint):
    def stop(self):
        hits.write(self.symbol + "\n")
        gdb.post_event(self.delete)  # one report per function; then it runs at full speed
        return False

for line in open(os.environ["SYMBOL_ORDER_FUNCTIONS"]):
    addr, name = line.split()
    FirstCall("*0x%x" % (base + int(addr, 16)), internal=True).symbol = name
gdb.execute("continue")
"""


# The plain run's upstream answers as the peer bench's nginx does (Server, Date, Connection),
# whose headers take paths in the client that callgrind.py's bare answer does not.
NGINX_LIKE_ANSWER = (b"HTTP/1.1 202 Accepted\r\nServer: nginx/1.22.1\r\n"
                     b"Date: Fri, 04 Dec 2026 21:00:00 GMT\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 22\r\nConnection: keep-alive\r\n\r\n"
                     b'{"status":"accepted"}\n')


def native_run(binary, syms, work, tls):
    """The functions BINARY runs on this CPU, in the order of their first call, from start-up
    through callgrind.py's traffic, the admin endpoints and idle pauses (timers): a gdb
    breakpoint on every function, each removed at its first hit."""
    functions = os.path.join(work, "functions")
    with open(functions, "w") as f:
        for addr, _, name in syms:
            f.write(f"{addr:x} {name}\n")
    script = os.path.join(work, "first-call.py")
    with open(script, "w") as f:
        f.write(GDB_SCRIPT)
    hits = os.path.join(work, f"hits-{int(tls)}")
    up = cg.start_upstream(tls, None if tls else NGINX_LIKE_ANSWER)
    port, admin = free_port(), free_port()
    config = cg.proxy_config(work, port, admin, up.getsockname()[1], tls)
    env = dict(proxy_env(), SYMBOL_ORDER_HITS=hits, SYMBOL_ORDER_FUNCTIONS=functions)
    gdb = subprocess.Popen(["gdb", "-q", "-batch", "-x", script, "--args", binary, "--config",
                            config], env=env, stdout=open(os.path.join(work, "gdb.log"), "wb"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            assert gdb.poll() is None, f"gdb exited; see {work}/gdb.log"
            assert time.time() < deadline, "the proxy did not listen within 300 s under gdb"
            try:
                for listener in (port, admin):
                    socket.create_connection(("127.0.0.1", listener), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        for path in ("/readyz", "/livez", "/metrics"):
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
        for _ in range(3):
            for request in cg.REQUESTS.values():
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                cg.send(conn, request, 50)
                conn.close()
            # wrk's request: nothing but Host, several on one connection at once.
            with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
                raw.sendall(b"GET /v1/images?limit=10 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 20)
                got = b""
                while got.count(b"HTTP/1.1 202") < 20:
                    chunk = raw.recv(65536)
                    assert chunk, "the proxy closed the pipelined connection"
                    got += chunk
            time.sleep(1.5)  # past RELEASE_UPSTREAM_AFTER and the once-a-second timers
        time.sleep(11)  # tokio's idle blocking threads exit after 10 s
    finally:
        os.killpg(gdb.pid, 9)  # gdb and the proxy it started
        gdb.wait(timeout=30)
        up.close()
    with open(hits) as f:
        return [l.strip() for l in f if l.strip()]


def ordering(binary, work):
    """BINARY's functions that ran natively, hottest (by callgrind's count) first, then by first
    call; then those that ran only under valgrind (fallbacks for CPUs without SHA-NI, AVX-512
    or VAES)."""
    syms = text_symbols(binary)
    cost = callgrind_costs(callgrind_runs(binary, work), os.path.basename(binary))
    ran = []
    for tls in (False, True):
        ran += [fn for fn in native_run(binary, syms, work, tls) if fn not in ran]
    first = {fn: i for i, fn in enumerate(ran)}
    native = sorted(ran, key=lambda fn: (-cost.get(fn, 0), first[fn]))
    names = {s[2] for s in syms}
    return native + [fn for fn, _ in cost.most_common() if fn in names and fn not in first]


def build_key(binary):
    return os.path.relpath(binary, ROOT)


def write(binaries):
    for tool in ("valgrind", "gdb", "nm"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    for binary in binaries:
        if not os.path.isfile(binary):
            raise SystemExit(f"{binary} is missing; build it first:\n{BUILDS}")
    rustc = subprocess.run(["rustc", "-V"], capture_output=True, text=True).stdout.strip()
    sections = []
    for binary in binaries:
        work = tempfile.mkdtemp(prefix="symbol-order-")
        try:
            sections.append((build_key(binary), ordering(binary, work)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    with open(LIST, "w") as f:
        f.write("# Written by scripts/symbol-order.py; read by build.rs (lld --symbol-ordering-file).\n"
                f"# {rustc}. One section per build: their function names differ in the hashes.\n")
        for key, names in sections:
            f.write(f"# build: {key}\n")
            for fn in names:
                f.write(fn + "\n")
    print(f"{LIST}: " + ", ".join(f"{key} {len(names)} functions" for key, names in sections))


def sections():
    """{build: [names]} from the list."""
    out, key = {}, None
    with open(LIST) as f:
        for line in f:
            line = line.strip()
            if line.startswith("# build: "):
                key = line[len("# build: "):]
                out[key] = []
            elif line and not line.startswith("#") and key is not None:
                out[key].append(line)
    return out


def check(binary):
    """Whether BINARY's `.text` starts with the listed functions in the listed order. Rust's
    functions each have their own section, so the linker can place each; C and assembly (ring's,
    compiler-builtins') come in whole files' sections, so only the Rust ones are held to it."""
    syms = text_symbols(binary)
    at = {name: addr for addr, _, name in syms}
    listed_builds = sections()
    # This build's section, or (a binary elsewhere) the one it has most names of.
    wanted = listed_builds.get(build_key(binary)) or max(
        listed_builds.values(), key=lambda names: sum(n in at for n in names))
    rust = lambda n: n.startswith(("_ZN", "_R"))
    # lld orders by a name's first line in the whole file (a name in two sections is placed
    # where the first puts it).
    rank = {}
    for names in listed_builds.values():
        for n in names:
            rank.setdefault(n, len(rank))
    present = sorted({n for n in wanted if n in at}, key=rank.get)
    share = len(present) / max(1, len(set(wanted)))
    addrs = [at[n] for n in present if rust(n)]
    in_order = bool(addrs) and all(a < b for a, b in zip(addrs, addrs[1:]))
    listed_set = set(present)
    first, last = (min(addrs), max(addrs)) if addrs else (0, 0)
    between = [n for a, _, n in syms if first <= a <= last and n not in listed_set and rust(n)]
    size = sum(s for _, s, n in syms if n in listed_set)
    text = sum(s for _, s, _ in syms)
    print(f"{binary}: {len(present)} of {len(wanted)} listed functions ({share:.0%}), "
          f"{size / 1e6:.2f} of {text / 1e6:.2f} MB of code; the Rust ones in the listed order: "
          f"{'yes' if in_order else 'no'}; unlisted Rust functions among them: {len(between)}")
    if share < 0.9 or not in_order or between:
        print(f"the list is stale or was not used: build both\n{BUILDS}\nthen run "
              "`python3 scripts/symbol-order.py` and commit scripts/symbol-order.txt")
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binaries", nargs="*", default=DEFAULT_BINARIES)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    binaries = [os.path.abspath(b) for b in args.binaries]
    if args.check:
        return max(check(b) for b in binaries)
    return write(binaries)


if __name__ == "__main__":
    sys.exit(main())
