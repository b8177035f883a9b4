#!/bin/bash
# Builds the kube-apiserver the Kubernetes-API tests run against (v1.20.2), offline, from
# Debian bookworm's packages only (no Go module proxy is reachable). `cargo xtask setup`
# runs it when $D/bin/kube-apiserver is missing; it takes about 8.5 minutes cold on two
# cores, 48 s with a warm Go cache. Debian's etcd-server serves as its store. From Debian:
#   - Go 1.19 (golang-go), etcd-server 3.4.23, kubernetes source package (src:kubernetes
#     1.20.5+really1.20.2-1.1+deb12u1: full upstream v1.20.2 tree WITH vendor/), reflect2 1.0.2 sources.
# Writes only under $D and $T, plus the apt installs. No controller-manager: the tests need none.
set -euo pipefail
D=${D:-/var/cache/dnsfast-kube-apiserver}
T=${T:-/tmp/dnsfast-kube-apiserver-build}
SRC=$D/src/k8s-1.20
mkdir -p "$D"/{bin,src,debs,gocache} "$T"/{apt,gotmp} "$D"/apt/lists/partial "$D"/apt/cache/archives/partial

# 1. toolchain + etcd from Debian (bookworm main)
export DEBIAN_FRONTEND=noninteractive
command -v go >/dev/null && command -v etcd >/dev/null && command -v dpkg-source >/dev/null || {
  apt-get update -qq
  apt-get install -y -qq golang-go etcd-server dpkg-dev openssl curl bc >/dev/null
}

# 2. Debian source package of kubernetes (bookworm) via a private deb-src list (system apt config untouched)
if [ ! -d "$SRC" ]; then
  # deb-src entries made from the machine's own apt sources (one-line or deb822 format), in a private list
  mkdir -p "$T/apt/sources.list.d"
  grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/^deb /deb-src /' > "$T/apt/sources.list" || true
  for f in /etc/apt/sources.list.d/*.sources; do
    if [ -e "$f" ]; then sed 's/^Types:.*/Types: deb-src/' "$f" > "$T/apt/sources.list.d/$(basename "$f")"; fi
  done
  printf '%s\n' "Dir::Etc::SourceList \"$T/apt/sources.list\";" "Dir::Etc::SourceParts \"$T/apt/sources.list.d\";" \
                "Dir::State::Lists \"$D/apt/lists\";" "Dir::Cache \"$D/apt/cache\";" > "$T/apt/apt.conf"
  export APT_CONFIG=$T/apt/apt.conf
  apt-get update -qq
  (cd "$D/src" && apt-get source --download-only kubernetes 2>/dev/null && dpkg-source -x kubernetes_*.dsc k8s-1.20 >/dev/null)
  unset APT_CONFIG
  # Go >= 1.18 breaks modern-go/reflect2 v1.0.1 (vendored); drop in Debian's 1.0.2 sources (same API)
  (cd "$D/debs" && apt-get download golang-github-modern-go-reflect2-dev 2>/dev/null && dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb x)
  R=$SRC/vendor/github.com/modern-go/reflect2
  rm -f "$R"/*.go "$R"/*.s
  cp "$D"/debs/x/usr/share/gocode/src/github.com/modern-go/reflect2/*.{go,s} "$R"/
fi

# 3. Build in GOPATH mode with vendor/ (as k8s 1.20's own Makefile does: GO111MODULE=off)
export GOPATH=$D/gopath-k8s GOCACHE=${GOCACHE:-$D/gocache} GOTMPDIR=$T/gotmp
export GO111MODULE=off GOFLAGS= GOMAXPROCS=2 CGO_ENABLED=0 GOPROXY=off
mkdir -p "$GOPATH/src/k8s.io" && ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# 3a. generated OpenAPI definitions (normally produced by `make`; missing from the tarball)
if [ ! -f pkg/generated/openapi/zz_generated.openapi.go ]; then
  nice -n 19 go build -o "$D/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  DIRS=$(find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) -type f -name '*.go' \
    | sed 's|^./staging/src|vendor|; s|^\./||' \
    | grep -v -E '^vendor/k8s.io/(code-generator|sample-apiserver)/' \
    | while read -r f; do g=$f; case $f in vendor/k8s.io/*) g=staging/src/${f#vendor/};; esac
        grep -q -E '^// *\+k8s:' "$g" && grep -q '+k8s:openapi-gen=' "$g" && dirname "$f" || true; done \
    | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
  nice -n 19 "$D/bin/openapi-gen" --logtostderr -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi -h hack/boilerplate/boilerplate.generatego.txt -r "$T/openapi-violations.report"
fi

# 3b. kube-apiserver (version stamped so /version says v1.20.2)
V=v1.20.2; LD="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LD="$LD -X k8s.io/kubernetes/vendor/$p.gitVersion=$V -X k8s.io/kubernetes/vendor/$p.gitMajor=1"
  LD="$LD -X k8s.io/kubernetes/vendor/$p.gitMinor=20 -X k8s.io/kubernetes/vendor/$p.gitTreeState=clean"
  LD="$LD -X k8s.io/kubernetes/vendor/$p.buildDate=2021-01-13T00:00:00Z"
done
nice -n 19 go build -p 2 -trimpath -ldflags "$LD" -o "$D/bin/kube-apiserver.tmp" ./cmd/kube-apiserver
mv "$D/bin/kube-apiserver.tmp" "$D/bin/kube-apiserver"
"$D/bin/kube-apiserver" --version

