#!/usr/bin/env python3
"""On more than one CPU: one proxy process on a multi-thread runtime against one process per
CPU, each on a single-threaded runtime, sharing the port through `server.reuse_port`.

Both layouts get the same CPUs (all of them, or `--cpus`), the same nginx upstream
(`return 202`) and the same load (`wrk -t<cpus> -c<conns>`, GET /v1/images?limit=10, sharing
those CPUs: on a small machine the load generator competes with the proxy in both layouts
alike). For each round and layout, fresh processes, a warm-up wrk run, then a measured one:
CPU per request is the proxy processes' own utime+stime over the run divided by the
requests wrk counted; voluntary and involuntary context switches per request are read from
/proc/PID/status (a multi-thread runtime hands work between its threads). The target-E
configuration of the peer bench, access log on (to each process's log file).

    python3 scripts/runtimes.py [BINARY] [--cpus 0,1] [--conns 64] [--secs 5] [--rounds 3]

Bounded: every wait has a deadline, every process it starts is killed by PID, 127.0.0.1 only.
Needs: wrk, nginx, taskset.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchkit import cpu_seconds, free_port, nginx_conf, proxy_env, wait_port
from benchkit import write_target_e_config

def switches(pid):
    """Voluntary + involuntary context switches of every thread of `pid`."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            text = f.read()
        total += sum(int(v) for v in re.findall(r"ctxt_switches:\s+(\d+)", text))
    return total


def wrk(port, threads, conns, secs):
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "5s",
         f"http://127.0.0.1:{port}/v1/images?limit=10"],
        capture_output=True, text=True, timeout=secs + 30)
    m = re.search(r"(\d+) requests in", out.stdout)
    if not m:
        raise SystemExit(f"wrk printed no request count:\n{out.stdout}{out.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    return int(m.group(1)), int(bad.group(1)) if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", nargs="?", default="target/release/scp-auth-proxy")
    ap.add_argument("--cpus", default=",".join(str(c) for c in sorted(os.sched_getaffinity(0))))
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cpus = [int(c) for c in args.cpus.split(",")]
    assert 1 < len(cpus) <= 64 and 0 < args.conns <= 4096
    assert 0 < args.secs <= 60 and 0 < args.rounds <= 9
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    cpu_list = ",".join(map(str, cpus))
    work = tempfile.mkdtemp(prefix="runtimes-")
    procs = []

    def start(cmd, log, env=None):
        p = subprocess.Popen(cmd, stdout=open(os.path.join(work, f"{log}.log"), "ab"),
                             stderr=subprocess.STDOUT, env=env)
        procs.append(p)
        return p

    def stop(p):
        p.kill()
        p.wait(timeout=30)
        procs.remove(p)

    try:
        up_port = free_port()
        upstream = start(["taskset", "-c", cpu_list, "nginx", "-p", work, "-c",
                          nginx_conf(work, "U", up_port, "")], "upstream")
        wait_port(up_port, [upstream])
        binary = os.path.abspath(args.binary)

        def start_layout(per_cpu):
            port = free_port()
            started = []
            for i, cpu in enumerate(cpus if per_cpu else [None]):
                d = os.path.join(work, f"{'p' if per_cpu else 'm'}{i}")
                os.makedirs(d, exist_ok=True)
                config = write_target_e_config(d, port, free_port(), f"http://127.0.0.1:{up_port}")
                env = proxy_env()
                if per_cpu:
                    env["SCP_PROXY_SERVER__REUSE_PORT"] = "true"
                pin = str(cpu) if per_cpu else cpu_list
                started.append(start(["taskset", "-c", pin, binary, "--config", config],
                                     os.path.basename(d), env))
                wait_port(port, started)
            return started, port

        layouts = [("one process, multi-thread runtime", False),
                   (f"{len(cpus)} processes, one per CPU, reuse_port", True)]
        rows = {}
        print(f"{'layout':44} {'req/s':>8} {'CPU/req':>8} {'switches/req':>12} {'errors':>6}")
        for _ in range(args.rounds):
            for name, per_cpu in layouts:
                started, port = start_layout(per_cpu)
                wrk(port, len(cpus), args.conns, 2)  # warm-up: pools, buffers, page faults
                cpu0 = sum(cpu_seconds(p.pid) for p in started)
                sw0 = sum(switches(p.pid) for p in started)
                t0 = time.time()
                count, bad = wrk(port, len(cpus), args.conns, args.secs)
                elapsed = time.time() - t0
                cpu = sum(cpu_seconds(p.pid) for p in started) - cpu0
                sw = sum(switches(p.pid) for p in started) - sw0
                for p in started:
                    stop(p)
                row = (count / elapsed, cpu / count * 1e6, sw / count)
                rows.setdefault(name, []).append(row)
                print(f"{name:44} {row[0]:8.0f} {row[1]:6.1f}µs {row[2]:12.3f} {bad:6d}", flush=True)
        med = lambda xs: sorted(xs)[len(xs) // 2]
        print("\nmedians")
        base = None
        for name, _ in layouts:
            r = rows[name]
            cpu = med([x[1] for x in r])
            base = base or cpu
            print(f"{name:44} {med([x[0] for x in r]):8.0f} req/s {cpu:6.1f}µs CPU/req "
                  f"({cpu / base:.2f}x) {med([x[2] for x in r]):.3f} switches/req")
    finally:
        for p in list(procs):
            p.kill()
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
