#!/usr/bin/env bash
# Builds the deployment tools the tests run (helm, promtool, kustomize) from the Go module proxy, pinned, into
# ${SIDECAR_PEERS_DIR:-<repo>/.peers}/bin. A tool already there at the pinned version and build tags is left alone,
# so a second run only reads the build info of three binaries.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="${SIDECAR_PEERS_DIR:-$root/.peers}"
bin="$peers/bin"
mkdir -p "$bin"

# name | package | module whose version the binary must carry | version | build tags
# promtool v0.316.0 is Prometheus 3.16; remove_all_sd leaves out the cloud service-discovery plugins (only
# `promtool check config` of such scrape configs needs them), which take most of its build time.
# kustomize v5.8.1 is the newest that builds with Go 1.26.
tools=(
  "helm|helm.sh/helm/v4/cmd/helm|helm.sh/helm/v4|v4.3.2|"
  "promtool|github.com/prometheus/prometheus/cmd/promtool|github.com/prometheus/prometheus|v0.316.0|remove_all_sd"
  "kustomize|sigs.k8s.io/kustomize/kustomize/v5|sigs.k8s.io/kustomize/kustomize/v5|v5.8.1|"
)

command -v go >/dev/null || { echo "tools:install: go is not installed; it builds helm, promtool and kustomize" >&2; exit 1; }

# "version tags" of the main module as the Go linker recorded them, or nothing when the binary is missing or not a
# Go build.
built_as() {
  [ -x "$1" ] || return 0
  { go version -m "$1" 2>/dev/null || true; } | awk -v m="$2" '
    $1 == "mod" && $2 == m { version = $3 }
    $1 == "build" && $2 ~ /^-tags=/ { tags = substr($2, 7) }
    END { if (version != "") print version " " tags }'
}

for entry in "${tools[@]}"; do
  IFS='|' read -r name pkg module version tags <<<"$entry"
  have="$(built_as "$bin/$name" "$module")"
  if [ "$have" = "$version $tags" ]; then
    echo "tools:install: $name $version${tags:+ ($tags)} already in $bin"
    continue
  fi
  echo "tools:install: building $name $version${tags:+ ($tags)} (${have:+replacing $have, }$pkg@$version)"
  start=$SECONDS
  # A private GOBIN so a failed build never leaves a half-written binary under the pinned name.
  tmp="$(mktemp -d)"
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -tags "$tags" "$pkg@$version"
  mv -f "$tmp/$name" "$bin/$name"
  rmdir "$tmp"
  echo "tools:install: $name $version built in $((SECONDS - start))s"
done
