#!/usr/bin/env bash
# Build the real Kubernetes control plane used by tests/k8s from the Go module
# proxy and cache it outside the repo.
#
# Why build instead of download: the machine reaches package registries only,
# and the Go module proxy serves the Kubernetes, etcd and helm sources. A full
# build takes ~13 min on 2 cores, so every binary is cached under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/mailgate/<component>-<version>/
# and rebuilt only when missing. A warm run does nothing.
#
# Usage:
#   hack/k8s-binaries.sh              build whatever is missing
#   hack/k8s-binaries.sh --print-env  print MAILGATE_*_BIN=dir lines (no build)
#
# Environment:
#   MAILGATE_K8S_BIN / KUBEBUILDER_ASSETS  a directory that already holds all
#                                          binaries: nothing is built
#   MAILGATE_KEEP_GO_CACHE=1               keep the ~10 GB Go module/build cache
#   XDG_CACHE_HOME                         cache root (default ~/.cache)
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
HELM_VERSION=v4.3.1

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/mailgate"
KUBE_DIR="$CACHE_ROOT/kubernetes-$K8S_VERSION"
ETCD_DIR="$CACHE_ROOT/etcd-$ETCD_VERSION"
HELM_DIR="$CACHE_ROOT/helm-$HELM_VERSION"
GO_CACHE_DIR="$CACHE_ROOT/go-build-cache"

KUBE_BINS=(kubectl kube-apiserver kube-controller-manager)
ALL_BINS=("${KUBE_BINS[@]}" etcd helm)

log() { printf '%s %s\n' "$(date '+%H:%M:%S')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# override_dir prints the MAILGATE_K8S_BIN/KUBEBUILDER_ASSETS directory when it
# holds every binary, so a pre-provisioned CI image never triggers a build.
override_dir() {
    local dir="${MAILGATE_K8S_BIN:-${KUBEBUILDER_ASSETS:-}}"
    [[ -n "$dir" ]] || return 1
    local bin
    for bin in "${ALL_BINS[@]}"; do
        [[ -x "$dir/$bin" ]] || return 1
    done
    printf '%s\n' "$dir"
}

print_env() {
    local dir
    if [[ -n "${MAILGATE_K8S_BIN:-}" ]]; then
        printf 'MAILGATE_KUBE_BIN=%s\nMAILGATE_ETCD_BIN=%s\nMAILGATE_HELM_BIN=%s\n' \
            "$MAILGATE_K8S_BIN" "$MAILGATE_K8S_BIN" "$MAILGATE_K8S_BIN"
    elif dir="$(override_dir)"; then
        printf 'MAILGATE_KUBE_BIN=%s\nMAILGATE_ETCD_BIN=%s\nMAILGATE_HELM_BIN=%s\n' "$dir" "$dir" "$dir"
    else
        printf 'MAILGATE_KUBE_BIN=%s\nMAILGATE_ETCD_BIN=%s\nMAILGATE_HELM_BIN=%s\n' "$KUBE_DIR" "$ETCD_DIR" "$HELM_DIR"
    fi
}

missing() { [[ ! -x "$1" ]]; }

# go_env exports the Go settings for every build step: private caches (so
# they can be deleted afterwards), module mode, static binaries, and the
# machine's own Go toolchain. GOPROXY is deliberately left as configured.
go_env() {
    export GOMODCACHE="$GO_CACHE_DIR/mod"
    export GOCACHE="$GO_CACHE_DIR/build"
    export GOFLAGS="-mod=mod ${GOFLAGS:-}"
    export CGO_ENABLED=0
    export GOTOOLCHAIN=local
    mkdir -p "$GOMODCACHE" "$GOCACHE"
    log "go $(go env GOVERSION), GOPROXY=$(go env GOPROXY), GOMODCACHE=$GOMODCACHE"
}

# scratch_module creates an empty module in a temp dir (removed on exit) and
# stores its path in SCRATCH (not printed: a $(...) subshell would lose the
# SCRATCH_DIRS entry the cleanup needs); building there keeps the repo clean.
SCRATCH_DIRS=()
cleanup() {
    local d
    for d in "${SCRATCH_DIRS[@]+"${SCRATCH_DIRS[@]}"}"; do rm -rf "$d"; done
    rm -f "$KUBE_DIR"/.*.tmp.* "$ETCD_DIR"/.*.tmp.* "$HELM_DIR"/.*.tmp.* 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so the EXIT trap also runs when interrupted
SCRATCH=""
scratch_module() {
    SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/mailgate-k8s-build.XXXXXX")"
    SCRATCH_DIRS+=("$SCRATCH")
    (cd "$SCRATCH" && go mod init scratch >/dev/null 2>&1)
}

# build_one builds package $3 into $2/$1 via a temp name and an atomic mv, so
# an interrupted build never leaves a half-written binary in the cache.
build_one() {
    local name="$1" outdir="$2" pkg="$3" ldflags="$4" note="$5" moddir="$6"
    local tmp="$outdir/.$name.tmp.$$" start=$SECONDS
    mkdir -p "$outdir"
    log "building $name ($note)..."
    (cd "$moddir" && go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg")
    mv -f "$tmp" "$outdir/$name"
    log "built $name in $((SECONDS - start))s -> $outdir/$name"
}

# kube_replaces adds a replace for every k8s.io/* staging module: kubernetes
# requires them at v0.0.0 and maps them to ./staging, which only works inside
# its own repo; outside it each must point at the matching v0.X.Y release.
kube_replaces() {
    local moddir="$1" gomod staging_version="v0.${K8S_VERSION#v1.}" mods
    gomod="$(cd "$moddir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
        | sed -n 's/^[[:space:]]*"GoMod":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')"
    [[ -f "$gomod" ]] || die "could not find go.mod of k8s.io/kubernetes@$K8S_VERSION"
    mods="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod")"
    [[ -n "$mods" ]] || die "no staging replaces found in $gomod"
    local args=() mod
    for mod in $mods; do args+=("-replace=$mod=$mod@$staging_version"); done
    (cd "$moddir" && go mod edit "${args[@]}")
    log "added ${#args[@]} staging replaces ($staging_version)"
}

build_kubernetes() {
    local todo=() bin
    for bin in "${KUBE_BINS[@]}"; do missing "$KUBE_DIR/$bin" && todo+=("$bin"); done
    [[ ${#todo[@]} -gt 0 ]] || return 0
    local moddir minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    scratch_module
    moddir="$SCRATCH"
    log "downloading k8s.io/kubernetes $K8S_VERSION modules (about 1 min)..."
    kube_replaces "$moddir"
    for bin in "${todo[@]}"; do
        (cd "$moddir" && go get -tool "k8s.io/kubernetes/cmd/$bin@$K8S_VERSION")
    done
    local ldflags="-s -w
        -X k8s.io/component-base/version.gitVersion=$K8S_VERSION
        -X k8s.io/component-base/version.gitMajor=1
        -X k8s.io/component-base/version.gitMinor=$minor
        -X k8s.io/component-base/version.gitTreeState=clean
        -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION
        -X k8s.io/client-go/pkg/version.gitMajor=1
        -X k8s.io/client-go/pkg/version.gitMinor=$minor
        -X k8s.io/client-go/pkg/version.gitTreeState=clean"
    ldflags="$(tr -s '[:space:]' ' ' <<<"$ldflags")"
    declare -A note=(
        [kubectl]="about 40 s on 2 cores"
        [kube-apiserver]="about 5 min on 2 cores"
        [kube-controller-manager]="about 2.5 min on 2 cores"
    )
    for bin in "${todo[@]}"; do
        build_one "$bin" "$KUBE_DIR" "k8s.io/kubernetes/cmd/$bin" "$ldflags" \
            "$K8S_VERSION, ${note[$bin]}" "$moddir"
    done
}

build_etcd() {
    missing "$ETCD_DIR/etcd" || return 0
    local moddir
    scratch_module
    moddir="$SCRATCH"
    (cd "$moddir" && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
    build_one etcd "$ETCD_DIR" go.etcd.io/etcd/server/v3 "-s -w" \
        "$ETCD_VERSION, about 30 s on 2 cores" "$moddir"
}

build_helm() {
    missing "$HELM_DIR/helm" || return 0
    local moddir
    scratch_module
    moddir="$SCRATCH"
    (cd "$moddir" && go get -tool "helm.sh/helm/v4/cmd/helm@$HELM_VERSION")
    build_one helm "$HELM_DIR" helm.sh/helm/v4/cmd/helm \
        "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
        "$HELM_VERSION, about 2.5 min on 2 cores" "$moddir"
}

all_present() {
    local bin
    for bin in "${KUBE_BINS[@]}"; do missing "$KUBE_DIR/$bin" && return 1; done
    missing "$ETCD_DIR/etcd" && return 1
    missing "$HELM_DIR/helm" && return 1
    return 0
}

main() {
    case "${1:-}" in
        --print-env) print_env; return 0 ;;
        "") ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; return 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    local dir
    if dir="$(override_dir)"; then
        log "using prebuilt binaries in $dir"
        return 0
    fi
    # An explicit MAILGATE_K8S_BIN that lacks a binary is a mistake to report,
    # not a reason for a 13-minute build (KUBEBUILDER_ASSETS from envtest
    # usually lacks helm and kube-controller-manager, so it only counts if complete).
    if [[ -n "${MAILGATE_K8S_BIN:-}" ]]; then
        die "MAILGATE_K8S_BIN=$MAILGATE_K8S_BIN lacks some of: ${ALL_BINS[*]}"
    fi
    if ! all_present; then
        command -v go >/dev/null || die "go is not installed"
        local start=$SECONDS
        go_env
        # Fast, small ones first so a partial cache is useful early.
        build_etcd
        build_kubernetes
        build_helm
        log "all binaries built in $((SECONDS - start))s"
        if [[ "${MAILGATE_KEEP_GO_CACHE:-0}" != 1 ]]; then
            log "removing Go caches in $GO_CACHE_DIR (set MAILGATE_KEEP_GO_CACHE=1 to keep)"
            go clean -modcache >/dev/null 2>&1 || true
            rm -rf "$GO_CACHE_DIR"
        fi
    fi
    log "binaries: kubernetes=$KUBE_DIR etcd=$ETCD_DIR helm=$HELM_DIR"
}

main "$@"
