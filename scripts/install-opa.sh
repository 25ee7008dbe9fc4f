#!/usr/bin/env bash
# Build a real `opa` binary (Open Policy Agent) from Debian source packages, offline from Go's point of
# view, and cache it. The OPA-backed tests (tests/e2e/test_opa_*.py) and the benchmark use it.
#
#   scripts/install-opa.sh            build (once) and print the binary's path
#   scripts/install-opa.sh --print    print the path if it is already built, else exit 1
#
# How: OPA's Go source ships in Debian sid as golang-github-open-policy-agent-opa-dev (1.4.2) together
# with every Go library it imports (golang-*-dev, sources under /usr/share/gocode) and a Go toolchain
# (golang-1.26-go). The script downloads those .debs with apt using a *private* apt directory (its own
# sources list, package lists and cache; the system's apt configuration is never changed), unpacks them
# with dpkg-deb into a scratch tree, and runs `go build` in GOPATH mode (GO111MODULE=off, GOPROXY=off:
# nothing is fetched by Go). OPA 1.4.2 was written against tablewriter 0.0.x, while sid ships 1.x with a
# different API, so bookworm's golang-github-olekukonko-tablewriter-dev 0.0.5 is laid over the GOPATH.
# The Debian mirror is taken from this machine's own apt sources. apt checks every .deb against the
# signed Release file (debian-archive-keyring).
#
# Result: $MCP_GUARD_CACHE/bin/opa (default ~/.cache/mcp-guard/bin/opa, ~35 MB); when run as root it is
# also copied to /usr/local/bin/opa (set OPA_LINK_DIR= to skip or to choose another directory).
# Idempotent: an existing binary reporting the expected version is kept. Needs: apt-get, dpkg-deb,
# ~3.5 GB of scratch space (removed afterwards), ~2 minutes on 2 cores. Works on Debian 12 as root.
set -euo pipefail

OPA_PKG=golang-github-open-policy-agent-opa-dev
OPA_VERSION=${OPA_VERSION:-1.4.2}
GO_PKG=${GO_PKG:-golang-1.26-go}
GO_SRC_PKG=${GO_PKG%-go}-src
TABLEWRITER_PKG=golang-github-olekukonko-tablewriter-dev
TABLEWRITER_VERSION=${TABLEWRITER_VERSION:-0.0.5-2}

CACHE=${MCP_GUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mcp-guard}
BIN_DIR=$CACHE/bin
OPA_BIN=$BIN_DIR/opa
if [[ -v OPA_LINK_DIR ]]; then
  LINK_DIR=$OPA_LINK_DIR
elif [[ $(id -u) == 0 ]]; then
  LINK_DIR=/usr/local/bin
else
  LINK_DIR=
fi

log() { printf 'install-opa: %s\n' "$*" >&2; }
die() { printf 'install-opa: error: %s\n' "$*" >&2; exit 1; }

have_expected_opa() {
  local out
  [[ -x $1 ]] && out=$("$1" version 2>/dev/null) && grep -qx "Version: $OPA_VERSION" <<<"$out"
}

link_binary() {
  if [[ -n $LINK_DIR ]] && ! cmp -s "$OPA_BIN" "$LINK_DIR/opa" 2>/dev/null; then
    mkdir -p "$LINK_DIR" && install -m 0755 "$OPA_BIN" "$LINK_DIR/opa" && log "installed $LINK_DIR/opa"
  fi
}

if [[ ${1:-} == --print ]]; then
  have_expected_opa "$OPA_BIN" && { echo "$OPA_BIN"; exit 0; }
  exit 1
fi

if have_expected_opa "$OPA_BIN"; then
  link_binary
  log "opa $OPA_VERSION already built"
  echo "$OPA_BIN"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb; do
  command -v "$tool" >/dev/null || die "'$tool' not found: this script needs a Debian-based system"
done
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -r $KEYRING ]] || die "$KEYRING missing (apt-get install debian-archive-keyring)"

# The Debian mirror this machine already uses: the first non-security URI of its apt sources.
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { if ($i !~ /security/) print $i; break } }' "$f"
  done
}
MIRROR=${MCP_GUARD_DEBIAN_MIRROR:-$(find_mirror | head -n 1)}
[[ -n $MIRROR ]] || die "no Debian mirror found in /etc/apt/sources.list*; set MCP_GUARD_DEBIAN_MIRROR"
MIRROR=${MIRROR%/}
log "Debian mirror: $MIRROR"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mcp-guard-opa.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
APT=$WORK/apt
mkdir -p "$APT"/lists/partial "$APT"/cache/archives/partial "$APT"/sources.list.d "$APT"/preferences.d \
  "$APT"/apt.conf.d "$WORK"/debs "$WORK"/overlay-debs "$WORK"/root "$WORK"/overlay
: >"$APT"/status
cat >"$APT"/sources.list <<EOF
deb [signed-by=$KEYRING] $MIRROR sid main
deb [signed-by=$KEYRING] $MIRROR bookworm main
EOF
# The private apt directory: nothing under /etc/apt or /var/lib/apt is read for sources or written.
APT_OPTS=(
  -o "Dir::Etc::sourcelist=$APT/sources.list"
  -o "Dir::Etc::sourceparts=$APT/sources.list.d"
  -o "Dir::Etc::preferencesparts=$APT/preferences.d"
  -o "Dir::State::Lists=$APT/lists"
  -o "Dir::State::status=$APT/status"
  -o "Dir::Cache=$APT/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Retries=3"
)

log "fetching package lists (sid, bookworm) into a private apt directory"
apt-get "${APT_OPTS[@]}" -qq update >&2

candidate() { apt-cache "${APT_OPTS[@]}" policy "$1" | awk '/Candidate:/ { print $2 }'; }
opa_deb_version=$(candidate "$OPA_PKG")
[[ $opa_deb_version == "$OPA_VERSION"+* || $opa_deb_version == "$OPA_VERSION"-* ]] ||
  die "sid has $OPA_PKG '${opa_deb_version:-(none)}', expected $OPA_VERSION (set OPA_VERSION to build another)"
[[ -n $(candidate "$GO_PKG") && $(candidate "$GO_PKG") != "(none)" ]] || die "sid has no $GO_PKG (set GO_PKG)"

# Every Go library OPA imports, recursively: the golang-*-dev packages of the dependency closure
# (binaries, C libraries and other Go toolchains in that closure are not needed for a CGO-free build).
apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances "$OPA_PKG" | grep -v '^ ' | sort -u >"$WORK"/closure.txt
{ grep -E '^golang-.*-dev$' "$WORK"/closure.txt; echo "$GO_PKG"; echo "$GO_SRC_PKG"; } | sort -u >"$WORK"/wanted.txt
log "downloading $(wc -l <"$WORK"/wanted.txt) packages ($OPA_PKG $opa_deb_version, $GO_PKG, Go libraries)"
(cd "$WORK"/debs && xargs -a "$WORK"/wanted.txt apt-get "${APT_OPTS[@]}" -qq download >&2)
(cd "$WORK"/overlay-debs && apt-get "${APT_OPTS[@]}" -qq download "$TABLEWRITER_PKG=$TABLEWRITER_VERSION" >&2)

log "unpacking"
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK"/root; done
for deb in "$WORK"/overlay-debs/*.deb; do dpkg-deb -x "$deb" "$WORK"/overlay; done

GO_DIR=$(find "$WORK"/root/usr/lib -maxdepth 1 -name 'go-1.*' -type d | head -n 1)
[[ -x $GO_DIR/bin/go ]] || die "no go binary in $GO_PKG"
log "building opa with $("$GO_DIR"/bin/go version | awk '{ print $3 }') (GOPATH mode, no network)"
export GOROOT=$GO_DIR
export GOPATH=$WORK/overlay/usr/share/gocode:$WORK/root/usr/share/gocode
export GO111MODULE=off GOPROXY=off GOFLAGS= GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$WORK/gocache
"$GO_DIR"/bin/go build -trimpath -ldflags "-s -w" -o "$WORK"/opa github.com/open-policy-agent/opa
have_expected_opa "$WORK"/opa || die "the built binary does not report version $OPA_VERSION"

mkdir -p "$BIN_DIR"
install -m 0755 "$WORK"/opa "$OPA_BIN"
link_binary
log "built $OPA_BIN ($(du -h "$OPA_BIN" | cut -f1))"
echo "$OPA_BIN"
