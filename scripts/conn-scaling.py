#!/usr/bin/env python3
"""CPU per request and peak memory as client connections grow (64 to 1,024 by default).

For each target and each connection count, a fresh target process is started pinned to CPU 0
(`taskset`), a warm-up wrk run fills its pools, then one measured wrk run (`wrk -t1 -cN`, pinned
to CPU 1, GET /v1/images?limit=10) is taken. CPU per request is the target's own utime+stime
(from /proc/PID/stat) over the run divided by the requests wrk counted, so it does not depend
on how fast wrk or the upstream are; VmHWM is the peak resident memory, read at the end.

Targets:
  E  scp-auth-proxy (argv BINARY, default target/release/scp-auth-proxy), access log on (to a
     file), the same configuration as the peer bench's target E.
  B  nginx proxying without signing (`keepalive 64` upstream pool, as the peer bench's B),
     when nginx is installed; the ratio E/B is printed for each connection count.
The upstream is nginx answering 202 (`return 202`) on CPU 1; without nginx the script stops.

    python3 scripts/conn-scaling.py [BINARY] [--conns 64,256,1024] [--secs 5] [--rounds 1]
        [--set KEY=VALUE ...]        extra lines for [services.virtualserver] (E only)
        [--also LABEL=BINARY ...]    more builds measured like E in the same run (before/after)
        [--perf]                     `perf record -g` each measured run; prints the ten
                                     user-space symbols with the most samples (self), the
                                     ten kernel ones, and the samples' split by object
                                     (kernel, the binary, libc), so CPU per request divides
                                     into time in the kernel and in user space

Bounded: every wait has a deadline, every process it starts is killed by PID, 127.0.0.1 only.
Needs: wrk, nginx, taskset, and an open-file limit above the largest connection count.
"""
import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from benchkit import cpu_seconds, free_port, nginx_conf, proxy_env, status_kib, wait_port
from benchkit import write_target_e_config

def perf_report(data, sort):
    out = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "--no-children", "-q", "-g", "none",
         "--sort", sort, "--percent-limit", "0.1"],
        capture_output=True, text=True, timeout=120).stdout
    return [" ".join(l.split()) for l in out.splitlines() if l.strip()]


def top_symbols(data, count=10):
    """The `count` user-space symbols (perf's `[.]`) and the `count` kernel ones (`[k]`) with
    the most self samples in `data`, and the share of samples by object (`dso`)."""
    lines = perf_report(data, "dso,sym")
    user = [l for l in lines if "[.]" in l][:count]
    kernel = [l for l in lines if "[k]" in l][:count]
    return user, kernel, perf_report(data, "dso")[:6]


def wrk(port, conns, secs):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "5s",
         f"http://127.0.0.1:{port}/v1/images?limit=10"],
        capture_output=True, text=True, timeout=secs + 30)
    m = re.search(r"(\d+) requests in", out.stdout)
    if not m:
        raise SystemExit(f"wrk printed no request count:\n{out.stdout}{out.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    sock = re.search(r"Socket errors: (.*)", out.stdout)
    return int(m.group(1)), (int(errors.group(1)) if errors else 0), (sock.group(1) if sock else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", nargs="?", default="target/release/scp-auth-proxy")
    ap.add_argument("--conns", default="64,256,1024")
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--also", action="append", default=[])
    ap.add_argument("--perf", action="store_true")
    args = ap.parse_args()
    also = [a.split("=", 1) for a in args.also]
    assert all(len(a) == 2 and a[0] not in ("E", "B") for a in also), "--also LABEL=BINARY"
    conns = [int(c) for c in args.conns.split(",")]
    assert all(0 < c <= 10000 for c in conns) and 0 < args.secs <= 60 and 0 < args.rounds <= 5
    for tool in ("wrk", "nginx", "taskset") + (("perf",) if args.perf else ()):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(conns) * 3 + 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    if want < max(conns) * 2 + 64:
        raise SystemExit(f"open-file hard limit {hard} is too low for {max(conns)} connections")

    work = tempfile.mkdtemp(prefix="conn-scaling-")
    procs = []

    def start(cmd, log, env=None):
        p = subprocess.Popen(["taskset", "-c", "0", *cmd] if log != "upstream" else
                             ["taskset", "-c", "1", *cmd],
                             stdout=open(os.path.join(work, f"{log}.log"), "wb"),
                             stderr=subprocess.STDOUT, env=env)
        procs.append(p)
        return p

    def stop(p):
        p.kill()
        p.wait(timeout=30)
        procs.remove(p)

    try:
        up_port = free_port()
        upstream = start(["nginx", "-p", work, "-c", nginx_conf(work, "U", up_port, "")], "upstream")
        wait_port(up_port, [upstream])

        env = proxy_env()
        extra = "\n".join(args.set)

        def e_starter(label, binary):
            def start_e():
                port, admin = free_port(), free_port()
                config = write_target_e_config(work, port, admin, f"http://127.0.0.1:{up_port}", extra)
                return start([os.path.abspath(binary), "--config", config], label, env), port
            return start_e

        def start_b():
            port = free_port()
            pool = f"    upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; keepalive_requests 1000000; }}"
            return start(["nginx", "-p", work, "-c", nginx_conf(work, "B", port, pool)], "B"), port

        targets = [("E", e_starter("E", args.binary))]
        targets += [(label, e_starter(label, binary)) for label, binary in also]
        targets += [("B", start_b)]
        rows = {}
        profiles = []
        print(f"{'target':6} {'conns':>5} {'req/s':>8} {'CPU/req':>8} {'VmHWM':>9} {'errors':>6}")
        for rnd in range(args.rounds):
            for n in conns:
                for name, starter in targets:
                    proc, port = starter()
                    wait_port(port, [proc])
                    wrk(port, n, 2)  # warm-up: pools, buffers, page faults
                    perf = None
                    if args.perf:
                        data = os.path.join(work, f"{name}-{n}-{rnd}.perf")
                        perf = subprocess.Popen(
                            ["perf", "record", "-q", "-F", "999", "-g", "-o", data,
                             "-p", str(proc.pid), "--", "sleep", str(args.secs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        procs.append(perf)
                    cpu0 = cpu_seconds(proc.pid)
                    t0 = time.time()
                    count, bad, sock = wrk(port, n, args.secs)
                    elapsed = time.time() - t0
                    cpu = cpu_seconds(proc.pid) - cpu0
                    if perf:
                        perf.wait(timeout=60)
                        procs.remove(perf)
                        profiles.append((name, n, cpu / count * 1e6, top_symbols(data)))
                    hwm = status_kib(proc.pid, "VmHWM")
                    stop(proc)
                    row = (count / elapsed, cpu / count * 1e6, hwm)
                    rows.setdefault((name, n), []).append(row)
                    print(f"{name:6} {n:5d} {row[0]:8.0f} {row[1]:6.1f}µs {hwm / 1024:7.1f}MiB "
                          f"{bad:6d} {sock}", flush=True)
        print("\nmedians over rounds; E/B ratios")
        print(f"{'conns':>5} {'E CPU/req':>10} {'B CPU/req':>10} {'E/B':>5} {'E VmHWM':>9} {'B VmHWM':>9} {'E/B':>5}")
        med = lambda xs: sorted(xs)[len(xs) // 2]
        for label in ["E"] + [label for label, _ in also]:
            if also:
                print(label)
            for n in conns:
                e, b = rows[(label, n)], rows[("B", n)]
                ec, bc = med([r[1] for r in e]), med([r[1] for r in b])
                eh, bh = med([r[2] for r in e]), med([r[2] for r in b])
                print(f"{n:5d} {ec:8.1f}µs {bc:8.1f}µs {ec / bc:5.2f} {eh / 1024:7.1f}MiB "
                      f"{bh / 1024:7.1f}MiB {eh / bh:5.2f}")
        for name, n, per_req, (user, kernel, objects) in profiles:
            print(f"\nperf, {name} at {n} connections ({per_req:.1f} µs per request)")
            print("  samples by object, and that share of CPU per request:")
            for line in objects:
                share = re.match(r"([\d.]+)%", line)
                us = f"{float(share.group(1)) * per_req / 100:5.1f} µs" if share else ""
                print(f"    {us}  {line}")
            print("  the ten user-space symbols with the most samples (self):")
            for line in user:
                print("    " + line)
            print("  the ten kernel symbols with the most samples (self):")
            for line in kernel:
                print("    " + line)
    finally:
        for p in list(procs):
            p.kill()
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
