"""Drives the PyPI package scpv2-sdk (a real SCP client nobody here wrote) through the proxy.

    python driver.py --proxy http://127.0.0.1:PORT --account ACCOUNT --results FILE SCENARIO...
    python driver.py --forward --account ACCOUNT --results FILE catalog   # with HTTPS_PROXY set

The SDK has no endpoint setting: it always calls https://{api_name}.{region}.{env}.samsung...
`Session.endpoint_for` is replaced so that every service goes to the proxy's prefix for it,
http://PROXY/{api_name} (or, in the `catalog` scenario, to the URL the rewritten IAM endpoint
catalog gives). With --forward the SDK keeps its own endpoints and reaches them through the
forward proxy (HTTPS_PROXY, REQUESTS_CA_BUNDLE from the environment); `catalog` then follows
the catalog the forward proxy returned. The SDK signs with a dummy key pair: the proxy
replaces its SCP headers.

Prints one line per call, "STATUS service.operation(args) -> what was sent", and writes every
call as JSON to FILE for the Rust test to check. Exits non-zero only on a driver error, never
on an HTTP status: judging statuses is the test's job.
"""
import argparse
import json
import os
import sys

import requests
import scpv2
import scpv2.session

DEMO_IMAGE_ID = "3f8c2a6e-9b1d-4c7a-8e5f-2d0b6a9c4e17"
DEMO_SERVER_ID = "9d2f6c1a-4b7e-4e3a-9c5d-1f8a2b6e0c34"
ODD_NAME = "우분투 a+b/c:d"

calls = []
sent = {}
_own_endpoint_for = scpv2.Session.endpoint_for
FORWARD = False  # --forward: through HTTPS_PROXY

_real_request = requests.request


def _recording_request(method, url, **kwargs):
    """requests.request as the SDK calls it, noting what went on the wire."""
    resp = _real_request(method, url, **kwargs)
    sent.clear()
    sent.update(
        wire=f"{resp.request.method} {resp.request.url}",
        version=(kwargs.get("headers") or {}).get("Scp-Api-Version"),
        unrouted=resp.headers.get("Scp-Proxy-Unrouted"),
    )
    return resp


class _Requests:
    request = staticmethod(_recording_request)


scpv2.session._requests = _Requests


def call(label, fn, **kwargs):
    """Calls one SDK operation; records and prints its status."""
    sent.clear()
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        result = fn(**kwargs)
        status = result["ResponseMetadata"]["HTTPStatusCode"]
        body = {k: v for k, v in result.items() if k != "ResponseMetadata"}
    except scpv2.ClientError as e:
        status = e.response.get("_status")
        body = {k: v for k, v in e.response.items() if k not in ("_status", "_body")}
    entry = {"call": label, "status": status, "body": body, **sent}
    calls.append(entry)
    unrouted = f" [Scp-Proxy-Unrouted: {sent['unrouted']}]" if sent.get("unrouted") else ""
    print(
        f"{status} {label}({args}) -> {sent.get('wire')} [Scp-Api-Version: {sent.get('version')}]{unrouted}",
        flush=True,
    )
    return entry


def session(endpoints):
    """A session whose services are at `endpoints(api_name)`; None: the SDK's own URLs."""
    scpv2.Session.endpoint_for = (
        _own_endpoint_for if endpoints is None else lambda self, api_name: endpoints(api_name)
    )
    # no_proxy=False lets requests use HTTPS_PROXY (the SDK ignores it by default).
    return scpv2.Session(
        access_key="app-holds-no-key",
        secret_key="app-holds-no-key",
        region="kr-west1",
        environment="e",
        no_proxy=not FORWARD,
    )


def images(proxy, account):
    sess = session(lambda api: f"{proxy}/{api}")
    iam = sess.client("endpoint")
    img = sess.client("virtualserver_image")
    url = f"https://object-store.kr-west1.e.samsungsdscloud.com/{account}:demo-bucket/images/ubuntu-22.04.qcow2"
    call("endpoint.get_endpoint_list", iam.get_endpoint_list)
    call("virtualserver_image.list_images", img.list_images)
    call("virtualserver_image.show_image", img.show_image, image_id=DEMO_IMAGE_ID)
    call(
        "virtualserver_image.create_image",
        img.create_image,
        name=ODD_NAME,
        os_distro="ubuntu",
        url=url,
    )
    # Space, '+', '/', ':', non-ASCII and a repeated key (a list value): the SDK signs these
    # unencoded but sends them encoded, so on its own the signature cannot match.
    call(
        "virtualserver_image.list_images",
        img.list_images,
        name=ODD_NAME,
        sort=["name:asc", "created_at:desc"],
        limit=10,
    )
    call("virtualserver_image.import_image", img.import_image, image_id=DEMO_IMAGE_ID, url=url)
    call("virtualserver_image.import_image", img.import_image, image_id=DEMO_IMAGE_ID, url=url)


def security_group(proxy, account):
    """An operation the SDK sends `virtualserver 1.0` for."""
    vs = session(lambda api: f"{proxy}/{api}").client("virtualserver")
    call(
        "virtualserver.attach_virtual_server_security_group",
        vs.attach_virtual_server_security_group,
        server_id=DEMO_SERVER_ID,
        security_group_id="sg-sdk-test",
    )


def catalog(proxy, account):
    """Asks IAM for the endpoint catalog, then calls virtualserver at the URL it gives, as
    SCP's Go SDK does: only the IAM call is pointed at the proxy by hand."""
    # Through the forward proxy (no --proxy) the SDK asks IAM at its own public URL.
    iam = session(None if proxy is None else lambda api: f"{proxy}/{api}").client("endpoint")
    listed = call("endpoint.get_endpoint_list", iam.get_endpoint_list)
    urls = {e["service_name"]: e["url"] for e in listed["body"].get("endpoints", [])}
    print(f"    catalog: {json.dumps(urls, ensure_ascii=False)}", flush=True)
    # A service missing from the catalog is a KeyError: a driver error, not a status.
    img = session(lambda api: urls[api]).client("virtualserver_image")
    call("virtualserver_image.list_images", img.list_images)
    call("virtualserver_image.show_image", img.show_image, image_id=DEMO_IMAGE_ID)


SCENARIOS = {"images": images, "security-group": security_group, "catalog": catalog}


def main():
    p = argparse.ArgumentParser()
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--proxy")
    g.add_argument("--forward", action="store_true")
    p.add_argument("--account", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS))
    a = p.parse_args()
    global FORWARD
    FORWARD = a.forward
    print(f"scpv2-sdk {scpv2.__version__}, requests {requests.__version__}, proxy {a.proxy or 'HTTPS_PROXY=' + os.environ.get('HTTPS_PROXY', '')}", flush=True)
    for name in a.scenarios:
        SCENARIOS[name](a.proxy, a.account)
    with open(a.results, "w", encoding="utf-8") as f:
        json.dump(calls, f, ensure_ascii=False)


if __name__ == "__main__":
    sys.exit(main())
