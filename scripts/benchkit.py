"""Shared by the measurement scripts in scripts/: a free loopback port and the proxy
configuration the peer bench uses for target E (one `virtualserver` service, access log on).
"""
import os
import socket


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
