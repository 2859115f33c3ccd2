#!/usr/bin/env bash
# Regenerate the wrapper go.mod/go.sum files from versions.env. Run after editing a
# version; commit the result. `make tools` only builds what these files pin.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=/dev/null
. "$here/versions.env"
export GOPATH="$root/.cache/go/path" GOCACHE="$root/.cache/go/cache" GOMODCACHE="$root/.cache/go/path/pkg/mod"
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local

# fresh NAME: start hack/tools/NAME/go.mod from nothing (a wrapper's own main.go, if any, stays).
fresh() { rm -f "$here/$1/go.mod" "$here/$1/go.sum"; (cd "$here/$1" && go mod init "aks-kms-operator/hack/tools/$1" >/dev/null 2>&1 && go mod edit -go=1.25.0); }

# Kubernetes: replace every staging module that k8s.io/kubernetes points at ./staging.
fresh kubernetes
modfile=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
staging_version="v0.${KUBERNETES_VERSION#v1.}"
(
  cd "$here/kubernetes"
  go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
  grep -E '=> \./staging/' "$modfile" | awk '{print $1}' | sort -u | while read -r mod; do
    go mod edit -replace "$mod=$mod@$staging_version"
  done
  go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" "k8s.io/kubernetes/cmd/kubectl@$KUBERNETES_VERSION"
)

fresh etcd
(cd "$here/etcd" && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION")

fresh helm
(cd "$here/helm" && go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
# Our own small mains (health-check runners for tests): pin the library, then let tidy fill go.sum.
fresh lua
(cd "$here/lua" && go get "github.com/yuin/gopher-lua@$GOPHER_LUA_VERSION" && go mod tidy)

fresh kstatus
(cd "$here/kstatus" && go get "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION" && go mod tidy)
# promtool: tool directive on cmd/promtool (built with -tags=remove_all_sd, see build.sh).
fresh promtool
(cd "$here/promtool" && go get -tool "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION")
echo "pinned: kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION," \
  "gopher-lua $GOPHER_LUA_VERSION, cli-utils $CLI_UTILS_VERSION, prometheus $PROMETHEUS_VERSION"
