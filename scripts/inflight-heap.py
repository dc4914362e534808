#!/usr/bin/env python3
"""Memory per request in flight: RSS growth, and where the heap goes (valgrind's DHAT).

A slow upstream (in this process, on 127.0.0.1: every request answered 202 after DELAY
seconds, HTTP/1.1 keep-alive) holds N requests in flight at once in the proxy: N client
connections each send the peer bench's GET and wait for the answer, ROUNDS times. Each round
all N are open and waiting together, so the proxy holds N downstream connections, N
upstream connections (`max_idle_connections = N`) and N requests' state at its peak.

Two runs of the proxy binary (argv BINARY, default target/release/scp-auth-proxy), each with
the peer bench's configuration for target E (access log on, to a file):
  1. natively: VmRSS when ready and VmHWM at the end, so (VmHWM - ready) / N is the resident
     memory per request in flight;
  2. under `valgrind --tool=dhat` (skipped with --no-dhat): the heap at its peak (DHAT's
     t-gmax), divided by N, by allocation site, grouped into what owns it (hyper's buffers,
     hyper's client request channel, tasks, header maps, ...), so a change shows which part
     it moved. The raw profile is kept with --keep DIR (open it in valgrind's dh_view.html).

    python3 scripts/inflight-heap.py [BINARY] [--conns 256] [--rounds 3] [--delay 2]
        [--no-dhat] [--keep DIR] [--top 12]

Bounded: at most 2,000 connections, every wait has a deadline, the proxy is stopped by PID
(SIGTERM, so DHAT writes its profile; SIGKILL after 120 s), 127.0.0.1 only. Needs valgrind
for the second run.
"""
import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchkit import free_port, proxy_env, status_kib, wait_port, write_target_e_config

GET = b"GET /v1/images?limit=10 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
ANSWER = (b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
          b"content-length: 22\r\n\r\n{\"status\":\"accepted\"}\n")

# What owns an allocation, from DHAT's frames (innermost first) of the release build.
def owner(frames):
    text = "\n".join(frames)
    aligned = "memalign" in " ".join(frames[:2])  # tokio's cache-aligned task cells
    if "hyper::client::dispatch::channel" in text:
        return "upstream: hyper client's request channel (tokio mpsc, 32-slot block)"
    if "poll_read_from_io" in text:
        if "forward::pool" in text:
            return "upstream: hyper read buffer"
        return "downstream: hyper read buffer"
    if "connect_and_send" in text or "forward::pool" in text:
        return "upstream: connection task" if aligned else "upstream: hyper write buffer"
    if "scp_auth_proxy::layers::" in text or "scp_auth_proxy::route" in text:
        return "layers: per-request values (header values, extensions)"
    if "Http1Transaction>::parse" in text:
        return "downstream: request header map"
    if "HttpService<B1>>::call" in text:
        return "the stack's future (one box per request)"
    if "server::connection::" in text or "serve_draining" in text:
        return ("downstream: connection task" if aligned
                else "downstream: hyper write buffer, connection state")
    if "RegistrationSet::allocate" in text:
        return "tokio: socket registrations"
    return "other (start-up state: config, metrics, runtime)"



async def upstream(reader, writer, delay):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            await asyncio.sleep(delay)
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def client_round(port, conns, timeout):
    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(GET)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            return head.split(b" ", 2)[1]
        finally:
            writer.close()
    statuses = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(conns))), timeout)
    bad = [s for s in statuses if s != b"202"]
    if bad:
        raise SystemExit(f"{len(bad)} of {conns} requests were not answered 202: {bad[:3]}")


def run_proxy(binary, work, up_port, args, dhat_out=None):
    """Starts the proxy (under DHAT when `dhat_out`), drives the rounds; returns (ready VmRSS
    KiB, VmHWM KiB)."""
    port, admin = free_port(), free_port()
    config = write_target_e_config(work, port, admin, f"http://127.0.0.1:{up_port}",
                                   f"max_idle_connections = {args.conns}")
    cmd = [os.path.abspath(binary), "--config", config]
    if dhat_out:
        cmd = ["valgrind", "--tool=dhat", f"--dhat-out-file={dhat_out}", *cmd]
    log = open(os.path.join(work, "proxy.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=proxy_env())
    try:
        wait_port(port, [proc], within=120 if dhat_out else 20)
        ready = status_kib(proc.pid, "VmRSS")
        slow = 20 if dhat_out else 1  # valgrind runs the proxy far slower
        for _ in range(args.rounds):
            asyncio.run_coroutine_threadsafe(
                client_round(port, args.conns, args.delay * 4 + 10 * slow), LOOP
            ).result(timeout=args.delay * 4 + 10 * slow + 5)
        hwm = status_kib(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return ready, hwm


def heap_at_peak(path, conns, top):
    d = json.load(open(path))
    ftbl = d["ftbl"]
    live = [p for p in d["pps"] if p.get("gb", 0) > 0]
    total = sum(p["gb"] for p in live)
    groups = {}
    sites = []
    for p in live:
        frames = [ftbl[i] for i in p["fs"]]
        groups[owner(frames)] = groups.get(owner(frames), 0) + p["gb"]
        names = [re.sub(r"^0x[0-9A-F]+: ", "", f).split(" (")[0] for f in frames[1:]]
        shown = [n for n in names if not re.match(
            r"(alloc::|core::|<alloc|__rust|malloc|realloc|calloc|posix_memalign|bytes::|"
            r"hashbrown::|std::|<std::|<bytes::)", n)]
        sites.append((p["gb"], p.get("gbk", 0), " <- ".join(s[:90] for s in shown[:3])))
    print(f"\nheap at its peak (DHAT t-gmax): {total / 1024:.0f} KiB, "
          f"{total / conns / 1000:.1f} KB per request in flight")
    for name, size in sorted(groups.items(), key=lambda g: -g[1]):
        print(f"  {size / conns / 1000:6.1f} KB  {name}")
    print(f"\nthe {top} largest allocation sites at the peak (KB per request in flight, blocks):")
    for size, blocks, where in sorted(sites, reverse=True)[:top]:
        print(f"  {size / conns / 1000:6.1f} KB {blocks:6d}  {where}")


LOOP = None


def main():
    global LOOP
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", nargs="?", default="target/release/scp-auth-proxy")
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay", type=float, default=2.0)
    ap.add_argument("--no-dhat", action="store_true")
    ap.add_argument("--keep")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    assert 0 < args.conns <= 2000 and 0 < args.rounds <= 10 and 0.1 <= args.delay <= 10
    if not args.no_dhat and not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (or pass --no-dhat)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.conns * 4 + 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    if want < args.conns * 4 + 64:
        raise SystemExit(f"open-file hard limit {hard} is too low for {args.conns} connections")

    work = args.keep or tempfile.mkdtemp(prefix="inflight-heap-")
    os.makedirs(work, exist_ok=True)
    LOOP = asyncio.new_event_loop()
    thread = threading.Thread(target=LOOP.run_forever, daemon=True)
    thread.start()
    try:
        up_port = free_port()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            lambda r, w: upstream(r, w, args.delay), "127.0.0.1", up_port, backlog=4096),
            LOOP).result(timeout=10)
        ready, hwm = run_proxy(args.binary, work, up_port, args)
        print(f"{args.conns} requests in flight, {args.rounds} rounds: VmRSS ready "
              f"{ready / 1024:.1f} MiB, VmHWM {hwm / 1024:.1f} MiB, "
              f"{(hwm - ready) * 1024 / args.conns / 1000:.1f} KB per request in flight")
        if not args.no_dhat:
            out = os.path.join(work, "dhat.json")
            run_proxy(args.binary, work, up_port, args, dhat_out=out)
            heap_at_peak(out, args.conns, args.top)
        LOOP.call_soon_threadsafe(server.close)
    finally:
        LOOP.call_soon_threadsafe(LOOP.stop)
        thread.join(timeout=10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
