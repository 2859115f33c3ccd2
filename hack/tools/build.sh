#!/usr/bin/env bash
# Build the pinned Go tools into .cache/bin from the Go module proxy.
#
# Each tool has a tiny wrapper module under hack/tools/<name>/ whose go.mod pins the
# upstream module (and, for Kubernetes, replaces every staging module with its
# published v0.X.Y, because k8s.io/kubernetes points them at ./staging and so
# cannot be built as a dependency otherwise). A stamp file per tool records the
# version it was built from, so a second run is a no-op taking well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=/dev/null
. "$here/versions.env"

cache="$root/.cache"
bin="$cache/bin"
mkdir -p "$bin" "$cache/stamps"
export GOPATH="$cache/go/path" GOCACHE="$cache/go/cache" GOMODCACHE="$cache/go/path/pkg/mod"
export GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local

# build NAME STAMP BINARY=PACKAGE... : build the packages of hack/tools/NAME unless the
# stamp (the pinned version plus the hash of the wrapper's go.mod and Go sources) matches and every binary exists.
build() {
  local name=$1 version=$2; shift 2
  local stamp stampfile="$cache/stamps/$name" pair ok=1 f files=("$here/$name/go.mod")
  # A wrapper's own Go sources count too (lua, kstatus), so editing them rebuilds the binary.
  for f in "$here/$name"/*.go; do [[ -e $f ]] && files+=("$f"); done
  stamp="$version $(cat "${files[@]}" | sha256sum | cut -c1-16)"
  for pair in "$@"; do [[ -x "$bin/${pair%%=*}" ]] || ok=0; done
  if [[ $ok == 1 && -f "$stampfile" && "$(cat "$stampfile")" == "$stamp" ]]; then
    echo "tools: $name $version up to date"; return
  fi
  echo "tools: building $name $version"
  local start=$SECONDS
  for pair in "$@"; do
    (cd "$here/$name" && go build -trimpath -ldflags="-s -w $(ldflags "$name")" -o "$bin/${pair%%=*}" "${pair#*=}")
  done
  echo "$stamp" >"$stampfile"
  echo "tools: built $name in $((SECONDS - start))s"
}

# Version strings the binaries report (kubectl version, /version), as upstream's build would set them.
ldflags() {
  case $1 in
    kubernetes)
      local v=$KUBERNETES_VERSION
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s ' \
          "$p" "$v" "$p" "$(cut -d. -f1 <<<"${v#v}")" "$p" "$(cut -d. -f2 <<<"$v")"
      done ;;
    helm) printf -- '-X helm.sh/helm/v3/internal/version.version=%s' "$HELM_VERSION" ;;
    promtool) printf -- '-X github.com/prometheus/common/version.Version=3.%s' "${PROMETHEUS_VERSION#v0.3}" ;;
  esac
}

build kubernetes "$KUBERNETES_VERSION" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver kubectl=k8s.io/kubernetes/cmd/kubectl
build etcd "$ETCD_VERSION" etcd=go.etcd.io/etcd/server/v3 etcdctl=go.etcd.io/etcd/etcdctl/v3
build helm "$HELM_VERSION" helm=helm.sh/helm/v3/cmd/helm
# Test-only runners for our Argo CD health script and for Flux's kstatus (hack/tools/{lua,kstatus}).
build lua "$GOPHER_LUA_VERSION" argocd-lua=.
build kstatus "$CLI_UTILS_VERSION" kstatus=.
# The rewrite benchmark's ceiling: standard library only (hack/tools/loadgen), so no pinned version.
build loadgen stdlib loadgen=.
# promtool for the alert-rule tests; remove_all_sd leaves out the service-discovery plugins (cloud SDKs).
GOFLAGS="$GOFLAGS -tags=remove_all_sd" build promtool "$PROMETHEUS_VERSION" promtool=github.com/prometheus/prometheus/cmd/promtool
