#!/usr/bin/env python3
"""The proxy's CPU per request through the forward-proxy listener beside the plain listener's,
same load, one proxy process, on 127.0.0.1.

Starts the built-in emulator (the signature-checking upstream) and one proxy (argv[1], default
target/release/scp-auth-proxy) with both listeners, then sends the same bounded load to each:
N sequential keep-alive `GET /v1/images` from one curl process (one connection; through the
forward listener one CONNECT tunnel, HTTP/1.1 or h2 inside it), and h2c to the plain
listener from h2load when it is installed. The proxy's CPU is
utime+stime from /proc/PID/stat read before and after each phase, divided by N. Every
response must be 200 (the emulator checked its signature), else the run fails. The emulator
and the proxy are killed by PID at the end.

    python3 scripts/forward-cpu.py [BINARY] [N]      (default N: 20000, at most 100000)

With CALLGRIND=1 the proxy runs under valgrind's callgrind and each phase also reports the
instructions the proxy executed per request (zeroed before, dumped after: stable on a busy
machine, unlike CPU time); use a small N there (e.g. 2000), it runs ~50x slower.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/scp-auth-proxy"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
assert 0 < N <= 100000
WARMUP = 500
HOST = "virtualserver.kr-west1.e.samsungsdscloud.com"
TICK = os.sysconf("SC_CLK_TCK")
CALLGRIND = os.environ.get("CALLGRIND") == "1"


def start(args, marker, log_path, prefix=()):
    """Starts BIN ARGS with JSON logs to log_path; returns (proc, the marker line as JSON)."""
    log = open(log_path, "w")
    p = subprocess.Popen([*prefix, BIN, *args, "--log-format", "json"], stdout=log, stderr=log)
    deadline = time.monotonic() + (120 if prefix else 20)
    while time.monotonic() < deadline:
        with open(log_path) as f:
            for line in f:
                if marker in line:
                    return p, json.loads(line)
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    sys.exit(f"{args} did not start:\n{open(log_path).read()}")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime: fields 14 and 15 of stat(5); fields[0] here is field 3.
    return int(fields[11]) + int(fields[12])


def curl(args, n, dest):
    """n sequential GETs on one connection; returns the status codes seen."""
    url = f"{dest}/v1/images?i=[1-{n}]"
    out = subprocess.run(
        # -q first: no ~/.curlrc.
        ["curl", "-q", "-s", "--max-time", "600", *args,
         "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n", url],
        capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )
    lines = out.stdout.split()
    codes, connects = lines[0::2], lines[1::2]
    return codes, sum(int(c) for c in connects), out.stderr


def callgrind_ir(pid, dir):
    """Dumps callgrind's counters since the last zeroing; returns the instructions (Ir)."""
    before = set(os.listdir(dir))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True,
                   timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for f in sorted(set(os.listdir(dir)) - before):
            if f.startswith("callgrind.out"):
                with open(os.path.join(dir, f)) as fh:
                    for line in fh:
                        if line.startswith(("summary:", "totals:")):
                            return int(line.split()[1])
        time.sleep(0.2)
    sys.exit("callgrind dump not found")


def h2load(n, dest):
    """n sequential h2c GETs (prior knowledge) on one connection, with h2load; the status
    codes seen, as curl() reports them."""
    out = subprocess.run(["h2load", "-n", str(n), "-c", "1", "-m", "1", f"{dest}/v1/images"],
                         capture_output=True, text=True, timeout=900)
    ok = [l for l in out.stdout.splitlines() if l.startswith("status codes:")]
    two = int(ok[0].split()[2]) if ok else 0
    return ["200"] * two + ["000"] * (n - two), 1, out.stdout[-500:]


def main():
    dir = tempfile.mkdtemp(prefix="forward-cpu-")
    secret = os.path.join(dir, "secret")
    with open(secret, "w") as f:
        f.write("cpu-run-secret")
    os.chmod(secret, 0o600)
    emu, line = start(["emulator", "--listen", "127.0.0.1:0", "--secret-key-file", secret,
                       "--import-delay", "1s"], "SCP emulator listening",
                      os.path.join(dir, "emulator.log"))
    emu_addr = line["url"].removeprefix("http://")
    ca = os.path.join(dir, "ca.pem")
    config = os.path.join(dir, "proxy.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
check_live_versions = false
[credentials]
access_key = "emulator-access-key"
secret_key_file = "{secret}"
watch_interval = "0s"
[routing]
default_service = "virtualserver"
[services.virtualserver]
upstream = "http://{emu_addr}"
api_version = "1.3"
region = "kr-west1"
intercept = ["{HOST}:443"]
[forward_proxy]
listen = "127.0.0.1:0"
ca_cert_out = "{ca}"
""")
    proxy = None
    try:
        prefix = ()
        if CALLGRIND:
            prefix = ("valgrind", "--tool=callgrind", "--quiet",
                      f"--callgrind-out-file={dir}/callgrind.out")
        proxy, line = start(["--config", config], '"serving"', os.path.join(dir, "proxy.log"),
                            prefix)
        plain, forward = line["addr"], line["forward_addr"]
        loads = [
            ("plain listener, HTTP/1.1", [], f"http://{plain}"),
            # curl 7.88 cannot reuse an h2c connection; h2load can (when installed).
            ("plain listener, h2c (h2load -c1 -m1)", None, f"http://{plain}"),
            ("forward listener, CONNECT + TLS + HTTP/1.1",
             ["-x", f"http://{forward}", "--cacert", ca, "--http1.1"], f"https://{HOST}"),
            ("forward listener, CONNECT + TLS + h2",
             ["-x", f"http://{forward}", "--cacert", ca, "--http2"], f"https://{HOST}"),
        ]
        print(f"proxy pid {proxy.pid}, emulator pid {emu.pid}; N = {N} sequential keep-alive "
              f"GET /v1/images per load, {WARMUP} warm-up requests before each")
        print(f"{'load':46} {'CPU ticks':>9} {'CPU/request':>12} {'wall':>7} {'conns':>5}"
              + (f" {'instructions/request':>21}" if CALLGRIND else ""))
        for name, args, dest in loads:
            if args is None and shutil.which("h2load") is None:
                print(f"{name:46} skipped: h2load not installed (apt-get install nghttp2-client)")
                continue
            send = (lambda n, d: h2load(n, d)) if args is None else (lambda n, d: curl(args, n, d))
            codes, _, err = send(WARMUP, dest)
            assert codes == ["200"] * WARMUP, f"{name} warm-up: {set(codes)} {err}"
            if CALLGRIND:
                subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True,
                               capture_output=True, timeout=60)
            before, t0 = cpu_ticks(proxy.pid), time.monotonic()
            codes, connects, err = send(N, dest)
            wall = time.monotonic() - t0
            ticks = cpu_ticks(proxy.pid) - before
            ir = ""
            if CALLGRIND:
                ir = f" {callgrind_ir(proxy.pid, dir) / N:>21,.0f}"
            bad = [c for c in codes if c != "200"]
            assert len(codes) == N and not bad, f"{name}: {len(codes)} answers, {len(bad)} not 200: {set(bad)} {err}"
            us = ticks / TICK / N * 1e6
            print(f"{name:46} {ticks:>9} {us:>9.1f} µs {wall:>6.1f}s {connects:>5}{ir}")
    finally:
        for p in (proxy, emu):
            if p is not None:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(dir, ignore_errors=True)


if __name__ == "__main__":
    main()
