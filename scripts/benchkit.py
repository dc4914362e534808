"""Shared by the measurement scripts in scripts/: a free loopback port, the proxy
configuration the peer bench uses for target E (one `virtualserver` service, access log on),
nginx configs for the upstream and target B, and reading a process's CPU time and memory.
"""
import os
import re
import socket
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_target_e_config(directory, port, admin, upstream, service_extra=""):
    """Writes `secret` (mode 0600) and `proxy.toml` into `directory`; returns the config's path.

    `upstream` is the service's base URL (`http://127.0.0.1:PORT`); `service_extra` holds more
    lines for `[services.virtualserver]`."""
    secret = os.path.join(directory, "secret")
    with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as s:
        s.write("bench-secret-0123456789abcdef\n")
    config = os.path.join(directory, "proxy.toml")
    with open(config, "w") as c:
        c.write(f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
check_live_versions = false
[credentials]
access_key = "bench-ak"
secret_key_file = "{secret}"
account_id = "bench-account"
[routing]
default_service = "virtualserver"
[services.virtualserver]
upstream = "{upstream}"
api_version = "1.3"
region = "kr-west1"
{service_extra}
""")
    return config


def proxy_env():
    """The environment without the proxy's own overrides, so only the config file decides."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SCP_PROXY_") and k != "SCP_SECRET_KEY"}


TICK = os.sysconf("SC_CLK_TCK")


def wait_port(port, procs, within=20):
    """Until 127.0.0.1:`port` accepts; exits if one of `procs` (the processes that should
    listen) ends first, or after `within` seconds."""
    deadline = time.time() + within
    while time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process exited before 127.0.0.1:{port} listened (see its log)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listened on 127.0.0.1:{port} within {within} s")


def cpu_seconds(pid):
    """utime + stime of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1))


def nginx_conf(work, name, port, body):
    """One-process nginx config in `work`: `name` "B" proxies to the `up` upstream that `body`
    defines (the peer bench's target B), any other name answers 202 itself (the upstream)."""
    path = os.path.join(work, f"{name}.conf")
    if name == "B":
        location = ('location / { proxy_pass http://up; proxy_http_version 1.1; '
                    'proxy_set_header Connection ""; }')
    else:
        location = "location / { return 202 '{\"status\":\"accepted\"}\\n'; }"
    with open(path, "w") as f:
        f.write(f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {work}/{name}-body;
    proxy_temp_path {work}/{name}-proxy;
    fastcgi_temp_path {work}/{name}-fcgi;
    uwsgi_temp_path {work}/{name}-uwsgi;
    scgi_temp_path {work}/{name}-scgi;
{body}
    server {{ listen 127.0.0.1:{port} backlog=4096; {location} }}
}}
""")
    return path
