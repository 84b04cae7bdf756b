{{/* Chart name, overridable. */}}
{{- define "futures-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full object name: the release name alone when it already contains the chart name. */}}
{{- define "futures-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "futures-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "futures-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "futures-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "futures-sidecar.labels" -}}
helm.sh/chart: {{ include "futures-sidecar.chart" . }}
{{ include "futures-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: futures-sidecar
{{- end }}

{{/* Labels of the pods that run the daemon: ours (standalone) or LiveKit's (livekit-sidecar). */}}
{{- define "futures-sidecar.podSelector" -}}
{{- if eq .Values.mode "standalone" }}
{{- include "futures-sidecar.selectorLabels" . }}
{{- else }}
{{- toYaml .Values.livekitSidecar.podSelector }}
{{- end }}
{{- end }}

{{/* Name of the daemon's container port: `http` in our pod, the patch's name in LiveKit's. */}}
{{- define "futures-sidecar.portName" -}}
{{- if eq .Values.mode "standalone" }}http{{ else }}{{ .Values.livekitSidecar.portName }}{{ end }}
{{- end }}

{{- define "futures-sidecar.secretName" -}}
{{- default (include "futures-sidecar.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "futures-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "futures-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "futures-sidecar.image" -}}
{{- $repo := required "image.repository is required: push the image built from ./Dockerfile and set its repository" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
An environment value as text. Helm reads numbers in values files as float64, which would print 86400000 as
8.64e+07: whole numbers are printed as integers, everything else as is.
*/}}
{{- define "futures-sidecar.envValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{- define "futures-sidecar.shutdownTimeoutMs" -}}
{{- $v := .Values.config.SIDECAR_SHUTDOWN_TIMEOUT_MS }}
{{- if kindIs "invalid" $v }}10000{{ else }}{{ int64 $v }}{{ end }}
{{- end }}

{{/* The drain deadline plus 10 s: close-with-grace exits hard 5 s after the deadline, the rest is slack. */}}
{{- define "futures-sidecar.terminationGracePeriodSeconds" -}}
{{- $minimum := add (div (int64 (include "futures-sidecar.shutdownTimeoutMs" .)) 1000) 5 }}
{{- $v := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $v }}
{{- add $minimum 5 }}
{{- else if lt (int64 $v) (int64 $minimum) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least SIDECAR_SHUTDOWN_TIMEOUT_MS/1000 + 5 = %d, or the drain is cut short" (int64 $v) (int64 $minimum)) }}
{{- else }}
{{- int64 $v }}
{{- end }}
{{- end }}

{{/* Combinations the schema cannot express; rendered once, from the ConfigMap. */}}
{{- define "futures-sidecar.validate" -}}
{{- if not .Values.config.SIDECAR_HOMESERVERS }}
{{- fail "config.SIDECAR_HOMESERVERS is required: origins (https://matrix.example), server names (example.org) or *" }}
{{- end }}
{{- if and (eq .Values.mode "standalone") (not .Values.config.LIVEKIT_URL) }}
{{- fail "config.LIVEKIT_URL is required in standalone mode: LiveKit's Service, e.g. http://livekit-livekit-server.livekit.svc:80" }}
{{- end }}
{{- if and (eq .Values.mode "standalone") (eq .Values.store.type "sqlite") (gt (int64 .Values.replicaCount) 1) }}
{{- fail "replicaCount > 1 needs store.type: redis; one process owns a SQLite file" }}
{{- end }}
{{- if and (eq .Values.store.type "redis") (not .Values.secret.existingSecret) (not .Values.store.redis.url) }}
{{- fail "store.type redis needs store.redis.url (or SIDECAR_STORE in secret.existingSecret)" }}
{{- end }}
{{- if and .Values.monitoring.podMonitor.enabled .Values.monitoring.serviceMonitor.enabled }}
{{- fail "enable monitoring.podMonitor or monitoring.serviceMonitor, not both: every sample would be scraped twice" }}
{{- end }}
{{- if and .Values.monitoring.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "monitoring.serviceMonitor needs service.enabled" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.service.enabled) }}
{{- fail "ingress needs service.enabled" }}
{{- end }}
{{- $_ := include "futures-sidecar.terminationGracePeriodSeconds" . }}
{{- end }}
