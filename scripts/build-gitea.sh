#!/usr/bin/env bash
# Builds the Gitea the forge tests run against into .tools/bin/gitea, once (a stamp).
# `go install code.gitea.io/gitea@…` fails (replace directives), so: download the module
# from the Go module proxy, copy it somewhere writable, and build it there as the main
# module. No bindata: templates are read at run time from .tools/gitea-src (the API does
# not need the web frontend). Cold build ~8 min on 2 cores; the stamp makes it free after.
set -euo pipefail
cd "$(dirname "$0")/.."
GITEA_VERSION=v1.27.3
module="code.gitea.io/gitea@$GITEA_VERSION"
bin=.tools/bin/gitea
stamp=.tools/bin/.gitea.version
src=.tools/gitea-src
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$module" ] && [ -d "$src/templates" ]; then
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "error: no go: cannot build gitea for the forge tests" >&2; exit 1; }
printf '==> %s\n' "gitea: building $module (minutes the first time)"
dir=$(GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "error: go mod download $module gave no Dir" >&2; exit 1; }
rm -rf "$src.tmp"
mkdir -p .tools/bin
cp -r "$dir" "$src.tmp"
chmod -R u+w "$src.tmp"
(cd "$src.tmp" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X main.Version=${GITEA_VERSION#v}" -o gitea.bin .)
mv "$src.tmp/gitea.bin" "$bin.tmp"
rm -rf "$src"
mv "$src.tmp" "$src"
mv "$bin.tmp" "$bin"
printf '%s\n' "$module" > "$stamp"
printf '==> %s\n' "gitea: built $bin"
