#!/bin/sh
# Helm 3 post-renderer: adds futures-sidecar to the LiveKit pod when LiveKit is installed with helm directly.
#   helm install livekit livekit/livekit-server -n livekit -f livekit-values.yaml \
#     --post-renderer ./post-render.sh
# SIDECAR_PATCH=sidecar-patch-plain.yaml selects the plain-container variant (Kubernetes < 1.29);
# SIDECAR_IMAGE sets the image (default registry.example.com/futures-sidecar:0.1.0).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/livekit.yaml"
cp "$here/${SIDECAR_PATCH:-sidecar-patch.yaml}" "$work/sidecar-patch.yaml"
image=${SIDECAR_IMAGE:-registry.example.com/futures-sidecar:0.1.0}
cat > "$work/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - livekit.yaml
patches:
  - path: sidecar-patch.yaml
    target:
      group: apps
      version: v1
      kind: Deployment
      labelSelector: app.kubernetes.io/name=livekit-server
images:
  - name: futures-sidecar
    newName: "${image%:*}"
    newTag: "${image##*:}"
YAML
if command -v kustomize >/dev/null 2>&1; then kustomize build "$work"; else kubectl kustomize "$work"; fi
