{{/*
Expand the name of the chart.
*/}}
{{- define "userpilot-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "userpilot-relay.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "userpilot-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "userpilot-relay.labels" -}}
helm.sh/chart: {{ include "userpilot-relay.chart" . }}
{{ include "userpilot-relay.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "userpilot-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "userpilot-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "userpilot-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "userpilot-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
"true" when the queue lives in PostgreSQL (database.url or database.existingSecret set),
"" for the embedded SQLite file. Use as: {{ if include "userpilot-relay.postgres" . }}
*/}}
{{- define "userpilot-relay.postgres" -}}
{{- if or .Values.database.url .Values.database.existingSecret -}}
true
{{- end -}}
{{- end }}

{{/*
Name of the Secret holding the relay's secrets (the chart's own, or existingSecret).
*/}}
{{- define "userpilot-relay.secretName" -}}
{{- default (include "userpilot-relay.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
Refuse shapes that would lose data or leak secrets, with a message that says what to set.
*/}}
{{- define "userpilot-relay.validate" -}}
{{- if not .Values.existingSecret }}
{{- if not .Values.secrets.userpilotApiKey }}
{{- fail "set secrets.userpilotApiKey (the Userpilot API key) or existingSecret (a Secret with key userpilot-api-key)" }}
{{- end }}
{{- if not .Values.secrets.relayApiKeys }}
{{- fail "set secrets.relayApiKeys (name:role:key,...) or existingSecret (a Secret with key relay-api-keys)" }}
{{- end }}
{{- end }}
{{- if and .Values.database.url (not (regexMatch "^postgres(ql)?://" .Values.database.url)) }}
{{- fail "database.url must be a PostgreSQL URL (postgresql://user:password@host:5432/db); leave it empty for the embedded SQLite store" }}
{{- end }}
{{- if and .Values.database.url .Values.database.existingSecret }}
{{- fail "set either database.url or database.existingSecret, not both" }}
{{- end }}
{{- if include "userpilot-relay.postgres" . }}
{{- $minPods := ternary .Values.autoscaling.minReplicas .Values.replicaCount .Values.autoscaling.enabled | int }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- $minAvailable := .Values.podDisruptionBudget.minAvailable }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "string" $minAvailable)) (ge (int $minAvailable) $minPods) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be below the minimum replica count (%d), or no node could ever be drained" (int $minAvailable) $minPods) }}
{{- end }}
{{- end }}
{{- if and (not (include "userpilot-relay.postgres" .)) .Values.persistence.enabled (has "ReadWriteMany" .Values.persistence.accessModes) }}
{{- fail "SQLite must never be shared by two pods: use accessModes [ReadWriteOnce] (or ReadWriteOncePod), or PostgreSQL for several replicas" }}
{{- end }}
{{- end }}

{{/*
secretKeyRef of the PostgreSQL URL (PostgreSQL mode only).
*/}}
{{- define "userpilot-relay.databaseSecretRef" -}}
{{- if .Values.database.existingSecret -}}
name: {{ .Values.database.existingSecret }}
key: {{ .Values.database.existingSecretKey }}
{{- else if .Values.existingSecret -}}
name: {{ include "userpilot-relay.fullname" . }}-database
key: database-url
{{- else -}}
name: {{ include "userpilot-relay.fullname" . }}
key: database-url
{{- end -}}
{{- end }}
