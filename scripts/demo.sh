#!/usr/bin/env bash
# `make demo`: the main job on the embedded default (an OCI layout), nothing else needed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/demo.py
