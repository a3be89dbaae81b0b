#!/usr/bin/env bash
# `make demo`: the main job on the bundled example, with nothing but the set-up.
# Today: put examples/quickstart in a fresh git repository and validate it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/reconciler-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

cp -r examples/quickstart "$work/state"
git -C "$work/state" init -q -b main
git -C "$work/state" add -A
git -C "$work/state" -c user.name=demo -c user.email=demo@example.org commit -q -m "quickstart state"

export RECONCILER_CACHE_DIR="$work/cache"
echo "\$ reconciler validate --repo $work/state"
"$root/.venv/bin/reconciler" validate --repo "$work/state"
