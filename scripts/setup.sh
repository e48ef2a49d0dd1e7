#!/usr/bin/env bash
# Set up everything the testbed needs, idempotently: safe to re-run, quick when nothing changed.
#
#   .venv/                 the project and its dev extras (re-installed when pyproject.toml changes)
#   tools/bin/             real Toxiproxy (server + CLI) and Jaeger, built from the Go module proxy,
#                          and k8s-validate (management/k8s/validate: `testbed k8s`'s manifests)
#   prometheus, promtool   Debian's `prometheus` package (installed when missing and we are root)
#   tools/zipkin/          Zipkin's server, the trace UI (the `exec` jar from Maven Central; Java 17+)
#
# Environment: PYTHON (interpreter, default python3.11 or python3), TESTBED_SKIP_JAEGER=1 to skip
# the Jaeger build (it is optional at run time: spans then go to OTLP-JSON files in the run folder),
# TESTBED_SKIP_ZIPKIN=1 to skip the trace UI (`testbed up` then runs without it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOXIPROXY_VERSION="v2.12.0"
JAEGER_VERSION="v1.75.0"
ZIPKIN_VERSION="3.6.1"
TOOLS="$ROOT/tools"
BIN="$TOOLS/bin"

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# --- Python -------------------------------------------------------------------------------------
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
[[ -n "$PYTHON" ]] || die "no Python found: install Python 3.11+ (Debian: apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$PYTHON is $("$PYTHON" --version 2>&1); the testbed needs Python 3.11+ (set PYTHON=/path/to/python3.11)"

if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv || die "could not create .venv (Debian: apt-get install python3-venv)"
fi
STAMP=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [[ ! -f "$STAMP" ]]; then
  say "installing the project and its dev extras into .venv (first time takes a minute)"
  .venv/bin/python -m pip install --quiet --upgrade pip \
    || die "pip could not reach PyPI: check the network or a proxy (PIP_INDEX_URL)"
  .venv/bin/python -m pip install --quiet -e '.[dev]' \
    || die "pip install failed: see the messages above (PyPI unreachable or a package refused)"
  rm -f .venv/.installed-*
  touch "$STAMP"
else
  say ".venv is up to date"
fi

# --- Go tools: Toxiproxy and Jaeger --------------------------------------------------------------
mkdir -p "$BIN"
need_go() {
  command -v go >/dev/null 2>&1 && return 0
  [[ -x /usr/local/go/bin/go ]] && { export PATH="/usr/local/go/bin:$PATH"; return 0; }
  die "the Go toolchain is missing; it is needed to build $1. Install Go 1.22+ (https://go.dev/doc/install, or Debian: apt-get install golang-go) and re-run make setup"
}

# go_build NAME MODULE@VERSION OUTPUT_NAME: build MODULE into tools/bin/OUTPUT_NAME, stamped with VERSION.
go_build() {
  local module="$1" version="$2" out="$3"
  if [[ -x "$BIN/$out" && "$(cat "$BIN/$out.version" 2>/dev/null)" == "$version" ]]; then
    return 0
  fi
  need_go "$out"
  say "building $out $version with go install (first time takes a while)"
  local gobin; gobin="$(mktemp -d)"
  if ! GOBIN="$gobin" GOFLAGS="-trimpath" go install "$module@$version" 2>"$gobin/log"; then
    cat "$gobin/log" >&2
    rm -rf "$gobin"
    die "go install $module@$version failed (above): the Go module proxy may be unreachable (check GOPROXY, default https://proxy.golang.org)"
  fi
  local built; built="$(find "$gobin" -maxdepth 1 -type f -perm -u+x | head -n1)"
  [[ -n "$built" ]] || die "go install $module@$version produced no binary"
  mv -f "$built" "$BIN/$out"
  echo "$version" > "$BIN/$out.version"
  rm -rf "$gobin"
}

# go_build_in_module MODULE VERSION PACKAGE OUTPUT_NAME: for modules whose go.mod has replace
# directives (Jaeger's), `go install pkg@version` refuses; build inside the downloaded module instead.
go_build_in_module() {
  local module="$1" version="$2" pkg="$3" out="$4"
  if [[ -x "$BIN/$out" && "$(cat "$BIN/$out.version" 2>/dev/null)" == "$version" ]]; then
    return 0
  fi
  need_go "$out"
  say "building $out $version from the Go module proxy (first time takes a few minutes)"
  local dir
  dir="$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" \
    || die "go mod download $module@$version failed: the Go module proxy may be unreachable (check GOPROXY)"
  [[ -n "$dir" && -d "$dir" ]] || die "go mod download $module@$version gave no source folder"
  ( cd "$dir" && GOFLAGS=-mod=mod go build -trimpath -o "$BIN/$out.tmp" "$pkg" ) \
    || die "building $out $version failed (above); re-run make setup, or set TESTBED_SKIP_JAEGER=1 to do without it"
  mv -f "$BIN/$out.tmp" "$BIN/$out"
  echo "$version" > "$BIN/$out.version"
}

go_build github.com/Shopify/toxiproxy/v2/cmd/server "$TOXIPROXY_VERSION" toxiproxy-server
go_build github.com/Shopify/toxiproxy/v2/cmd/cli "$TOXIPROXY_VERSION" toxiproxy-cli
if [[ "${TESTBED_SKIP_JAEGER:-0}" != "1" ]]; then
  go_build_in_module github.com/jaegertracing/jaeger "$JAEGER_VERSION" ./cmd/jaeger jaeger
fi
say "toxiproxy $(cat "$BIN/toxiproxy-server.version") in tools/bin"

# --- Zipkin, the trace UI (Maven Central) ---------------------------------------------------------
ZIPKIN_JAR="$TOOLS/zipkin/zipkin-server-$ZIPKIN_VERSION-exec.jar"
if [[ "${TESTBED_SKIP_ZIPKIN:-0}" != "1" && ! -f "$ZIPKIN_JAR" ]]; then
  command -v java >/dev/null 2>&1 \
    || die "java is missing; Zipkin (the trace UI) needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless), or set TESTBED_SKIP_ZIPKIN=1"
  command -v mvn >/dev/null 2>&1 \
    || die "mvn is missing; it fetches Zipkin from Maven Central (Debian: apt-get install maven), or set TESTBED_SKIP_ZIPKIN=1"
  say "fetching io.zipkin:zipkin-server:$ZIPKIN_VERSION (exec jar, 135 MB) from Maven Central"
  mvn -q -B dependency:copy "-Dartifact=io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" \
    "-DoutputDirectory=$TOOLS/zipkin" \
    || die "mvn dependency:copy io.zipkin:zipkin-server:$ZIPKIN_VERSION failed (above): check the network to Maven Central, or set TESTBED_SKIP_ZIPKIN=1"
  [[ -f "$ZIPKIN_JAR" ]] || die "Maven did not write $ZIPKIN_JAR"
fi
[[ -f "$ZIPKIN_JAR" ]] && say "zipkin $ZIPKIN_VERSION in tools/zipkin"

# The offline validator of `testbed k8s`'s manifests: the repo's own Go module (strict decoding
# into k8s.io/api and Chaos Mesh's api types), rebuilt when its source or go.sum changes.
K8S_VALIDATE="$ROOT/management/k8s/validate"
K8S_STAMP="$(cat "$K8S_VALIDATE/go.mod" "$K8S_VALIDATE/go.sum" "$K8S_VALIDATE"/*.go | sha256sum | cut -c1-16)"
if [[ ! -x "$BIN/k8s-validate" || "$(cat "$BIN/k8s-validate.version" 2>/dev/null)" != "$K8S_STAMP" ]]; then
  need_go k8s-validate
  say "building k8s-validate from management/k8s/validate (first time downloads k8s.io/api: a few minutes)"
  ( cd "$K8S_VALIDATE" && GOFLAGS=-mod=readonly go build -trimpath -o "$BIN/k8s-validate.tmp" . ) \
    || die "building k8s-validate failed (above): the Go module proxy may be unreachable (check GOPROXY)"
  mv -f "$BIN/k8s-validate.tmp" "$BIN/k8s-validate"
  echo "$K8S_STAMP" > "$BIN/k8s-validate.version"
fi

# --- Prometheus and promtool (Debian) ------------------------------------------------------------
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's prometheus package (prometheus, promtool)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
      || die "apt-get install prometheus failed: check the network to Debian's mirrors, then re-run make setup"
    # The package's service is not wanted: the testbed starts its own Prometheus per run.
    if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
    pkill -x prometheus >/dev/null 2>&1 || true
  else
    die "prometheus and promtool are missing: run 'sudo apt-get install prometheus' (Debian/Ubuntu) or put both on PATH, then re-run make setup"
  fi
fi
say "prometheus $(prometheus --version 2>&1 | head -n1 | awk '{print $3}') on PATH"

# --- Debian tools the tests and benchmarks use: Chromium (storefront browser test), HAProxy and wrk
# (side-by-side benchmarks). Installed when missing and we are root; otherwise named.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if (( ${#missing[@]} )); then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
      || die "apt-get install ${missing[*]} failed: check the network to Debian's mirrors, then re-run make setup"
    pkill -x haproxy >/dev/null 2>&1 || true
  else
    say "warning: ${missing[*]} missing: 'sudo apt-get install ${missing[*]}' (the browser test is skipped and the benchmarks say so without them)"
  fi
fi
say "ready"
