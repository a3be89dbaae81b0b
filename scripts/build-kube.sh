#!/usr/bin/env bash
# Builds a real Kubernetes API server and etcd into .tools/bin for the Lease election
# tests (tests/support/kube.py). Called by scripts/setup.sh --peers; a stamp per binary
# makes a second run free. Cold: ~12 min and ~6 GB of Go caches on 2 cores.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@v...` does not work: k8s.io/kubernetes's
# go.mod requires every k8s.io/* staging module at v0.0.0 and replaces it with a path
# under ./staging, which only holds inside its own repository. So we build from a wrapper
# main module that requires k8s.io/kubernetes and replaces each of those v0.0.0 modules
# with its published tag (v1.X.Y of kubernetes = v0.X.Y of the staging modules).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
KUBE_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.7.3
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
bin=$root/.tools/bin
mkdir -p "$bin"
say() { printf '==> %s\n' "$*"; }

stamped() {  # NAME WANT: true when .tools/bin/NAME exists and its stamp says WANT
  [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.version" 2>/dev/null)" = "$2" ]
}

kube_apiserver() {
  local want="k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION"
  stamped kube-apiserver "$want" && return 0
  say "kube-apiserver: building $want (wrapper module; minutes the first time)"
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  # The list of staging modules comes from kubernetes's own go.mod: every k8s.io/*
  # requirement at v0.0.0 (sample-cli-plugin and sample-controller are only replaced,
  # never required, so they are not in it).
  local gomod
  gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  {
    echo "module reconciler.test/kube"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print "\t" $1 " => " $1 " '"$STAGING_VERSION"'" }' "$gomod" | sort -u
    echo ")"
  } > "$work/go.mod"
  printf 'package kube\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n' > "$work/tools.go"
  local v=${KUBE_VERSION#v} ldflags
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=${v%%.*}"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2)"
  (cd "$work" && go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" \
    -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
  printf '%s\n' "$want" > "$bin/.kube-apiserver.version"
}

etcd() {
  local want="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  stamped etcd "$want" && return 0
  say "etcd: building $want"
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  printf 'module reconciler.test/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" > "$work/go.mod"
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' \
    > "$work/main.go"
  (cd "$work" && go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)
  printf '%s\n' "$want" > "$bin/.etcd.version"
}

case "${1:-all}" in
  all) kube_apiserver; etcd ;;
  kube-apiserver) kube_apiserver ;;
  etcd) etcd ;;
  *) echo "usage: scripts/build-kube.sh [all|kube-apiserver|etcd]" >&2; exit 2 ;;
esac
