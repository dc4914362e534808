#!/usr/bin/env bash
# Checks for what ships under deploy/ and config/, run by .ci/run after `cargo build`:
#   bash .ci/deploy-checks.sh [path/to/scp-auth-proxy]   (default: target/debug/scp-auth-proxy)
#
#  1. Kubernetes manifests against the Kubernetes $KUBE_VERSION schemas (kubernetes-validate,
#     strict: unknown fields fail), and, where kubectl is present, each kustomization rendered.
#  2. The Dockerfile linted (hadolint).
#  3. Every config/*.toml profile and the TOML inside every ConfigMap through the built binary's
#     check-config, with dummy credentials; and one broken file, which must be refused.
#  4. The systemd unit: systemd-analyze verify and an offline security score.
# Consistency between these files (ports, paths, names) is tests/deploy.rs, run by cargo test.
#
# Needs only the package registries (PyPI, for the pinned tools). Prints one line per check and
# exits non-zero when any check fails.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

BIN=${1:-target/debug/scp-auth-proxy}
KUBE_VERSION=${KUBE_VERSION:-1.33.0}
SECURITY_THRESHOLD=${SECURITY_THRESHOLD:-20}   # systemd-analyze scale: 20 = exposure 2.0
REQS=.ci/deploy-requirements.txt
VENV=${DEPLOY_CHECKS_VENV:-${TMPDIR:-/tmp}/scp-auth-proxy-deploy-checks-venv}

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS  $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }
skip() { echo "SKIP  $*"; }
# Runs a command quietly; on failure shows its output under the FAIL line.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
}

work=$(mktemp -d "${TMPDIR:-/tmp}/deploy-checks.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ------------------------------------------------------------------ tools
echo "== tools ($VENV)"
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$VENV"
  if ! { python3 -m venv "$VENV" &&
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQS"; }; then
    echo "FAIL  installing the pinned tools from $REQS"
    exit 1
  fi
  echo "$want" >"$stamp"
fi
echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -n1), $("$VENV/bin/hadolint" --version)"

# ------------------------------------------------------------------ 1. Kubernetes
echo "== Kubernetes manifests (schemas $KUBE_VERSION, strict)"
mapfile -t manifests < <(find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml | sort)
if [ "${#manifests[@]}" -eq 0 ]; then
  fail "no manifest found under deploy/kubernetes"
fi
for m in "${manifests[@]}"; do
  check "kubernetes-validate $m" \
    "$VENV/bin/kubernetes-validate" --strict --no-warn -k "$KUBE_VERSION" "$m"
done
# The kustomizations list plain files (tests/deploy.rs checks the lists); render them too when
# kubectl (which carries kustomize) is on the machine.
mapfile -t kustomizations < <(find deploy/kubernetes -name kustomization.yaml | sort)
for k in "${kustomizations[@]}"; do
  dir=$(dirname "$k")
  if command -v kubectl >/dev/null 2>&1; then
    out="$work/rendered-$(basename "$dir").yaml"
    if kubectl kustomize "$dir" >"$out" 2>"$out.err"; then
      check "kubectl kustomize $dir, rendered output validated" \
        "$VENV/bin/kubernetes-validate" --strict --no-warn -k "$KUBE_VERSION" "$out"
    else
      fail "kubectl kustomize $dir"
      sed 's/^/      /' "$out.err"
    fi
  else
    skip "kubectl kustomize $dir (no kubectl on this machine; the manifests themselves are validated above)"
  fi
done

# ------------------------------------------------------------------ 2. Dockerfile
echo "== Dockerfile"
check "hadolint deploy/docker/Dockerfile" "$VENV/bin/hadolint" --no-color deploy/docker/Dockerfile

# ------------------------------------------------------------------ 3. check-config
echo "== check-config ($BIN)"
if [ ! -x "$BIN" ]; then
  fail "no binary at $BIN (run cargo build first, or pass its path)"
else
  # Dummy key pair; the file paths in the configs point at mounts that exist only in a pod
  # or a systemd service, so the environment points them here instead.
  printf 'dummy-access-key\n' >"$work/access-key"
  printf 'dummy-secret-key\n' >"$work/secret-key"
  # Only the variables set below reach check-config: nothing from the caller's SCP_PROXY_*.
  run_check_config() {
    env -i PATH="$PATH" \
      SCP_PROXY_CREDENTIALS__ACCESS_KEY_FILE="$work/access-key" \
      SCP_PROXY_CREDENTIALS__SECRET_KEY_FILE="$work/secret-key" \
      "$BIN" check-config "$@"
  }
  for f in config/*.toml; do
    name=$(basename "$f" .toml)
    if [ "$name" = default ]; then
      echo "      config/default.toml is the base layer of every profile: checked through them"
      continue
    fi
    check "check-config --profile $name --config-dir config" \
      run_check_config --profile "$name" --config-dir config
  done
  # The TOML files inside the ConfigMaps, exactly as Kubernetes mounts them.
  extracted="$work/configmaps"
  mkdir -p "$extracted"
  if ! "$VENV/bin/python" - "$extracted" deploy/kubernetes <<'PY'; then
import pathlib, sys, yaml
out, root = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
found = 0
for path in sorted(root.rglob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if key.endswith(".toml"):
                dest = out / (str(path).replace("/", "__") + "__" + key)
                dest.write_text(text)
                found += 1
if not found:
    sys.exit("no ConfigMap with a .toml key under " + str(root))
PY
    fail "extracting the TOML from the ConfigMaps"
  fi
  for t in "$extracted"/*.toml; do
    [ -e "$t" ] || continue
    label=$(basename "$t" | sed -e 's#__#/#g' -e 's#/\([^/]*\.toml\)$# key \1#')
    check "check-config --config <ConfigMap $label>" run_check_config --config "$t"
  done
  # The harness must be able to fail: a key the proxy does not know has to be refused.
  printf '[services.virtualserver]\nupstream = "https://virtualserver.kr-west1.e.samsungsdscloud.com"\napi_version = "1.3"\n[server]\nno_such_key = 1\n' >"$work/broken.toml"
  if run_check_config --config "$work/broken.toml" >/dev/null 2>&1; then
    fail "check-config accepted a config with an unknown key (the checks above prove nothing)"
  else
    pass "check-config refuses a config with an unknown key"
  fi
fi

# ------------------------------------------------------------------ 4. systemd
echo "== systemd unit"
unit=deploy/systemd/scp-auth-proxy.service
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify wants ExecStart's binary to exist: point it at the one just built.
  abs_bin=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
  sed "s#^ExecStart=/usr/local/bin/scp-auth-proxy #ExecStart=$abs_bin #" "$unit" \
    >"$work/scp-auth-proxy.service"
  check "systemd-analyze verify $unit" systemd-analyze verify "$work/scp-auth-proxy.service"
  check "systemd-analyze security --offline $unit (exposure <= $SECURITY_THRESHOLD/10)" \
    systemd-analyze security --offline=true --threshold="$SECURITY_THRESHOLD" "$unit"
else
  skip "systemd-analyze not installed: unit not verified (tests/deploy.rs still checks it)"
fi

echo
echo "deploy-checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
