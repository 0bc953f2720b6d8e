{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "imgstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name for the objects this chart creates. */}}
{{- define "imgstream.fullname" -}}
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

{{- define "imgstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imgstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imgstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "imgstream.labels" -}}
helm.sh/chart: {{ include "imgstream.chart" . }}
{{ include "imgstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "imgstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "imgstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imgstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the consumer reads: the user's, or the chart's own. */}}
{{- define "imgstream.secretName" -}}
{{- default (include "imgstream.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* The Secret the setup hook reads: the user's, or a hook-managed copy of the chart's own
     (a pre-install hook runs before the release's own Secret exists). */}}
{{- define "imgstream.setupSecretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- printf "%s-setup" (include "imgstream.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* The chart's Secret data, each value required when no existingSecret is named. */}}
{{- define "imgstream.secretData" -}}
{{- range $key := list "DATABASE_CONNECTION_STRING" "MINIO_ACCESS_KEY" "MINIO_SECRET_KEY" }}
{{ $key }}: {{ required (printf "secret.%s is required unless existingSecret names a Secret holding it" $key) (get $.Values.secret $key) | b64enc | quote }}
{{- end }}
{{- end }}

{{/* Non-secret settings as EnvVar objects (for the setup hook, which cannot use the release's
     ConfigMap: a pre-install hook runs before it exists). */}}
{{- define "imgstream.configEnv" -}}
{{- range $key, $value := .Values.config }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The service account the setup hook runs as: the user's, or a hook-managed one with the same
     annotations (a pre-install hook runs before the release's own ServiceAccount exists). */}}
{{- define "imgstream.setupServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- printf "%s-setup" (include "imgstream.serviceAccountName" . | trunc 57 | trimSuffix "-") }}
{{- else }}
{{- include "imgstream.serviceAccountName" . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the consumer and the setup Job (not the service account). */}}
{{- define "imgstream.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* serve's objects: `<release>-serve`. */}}
{{- define "imgstream.serveName" -}}
{{- printf "%s-serve" (include "imgstream.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* The Secret serve reads: the user's, or the chart's own; never the consumer's, which holds
     write rights to the topic, the index and the bucket. */}}
{{- define "imgstream.serveSecretName" -}}
{{- $name := default (include "imgstream.serveName" .) .Values.serve.existingSecret }}
{{- if eq $name (include "imgstream.secretName" .) }}
{{- fail (printf "serve.existingSecret is %s, the consumer's Secret: serve needs an identity of its own (a read-only index role and an image-read S3 key; values.yaml, serve)" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* serve's Secret data, each value required when no serve.existingSecret is named (the OIDC
     client secret only with a browser sign-in client). */}}
{{- define "imgstream.serveSecretData" -}}
{{- range $key := list "DATABASE_CONNECTION_STRING" "IMGSTREAM_SERVE_S3_ACCESS_KEY" "IMGSTREAM_SERVE_S3_SECRET_KEY" }}
{{ $key }}: {{ required (printf "serve.secret.%s is required unless serve.existingSecret names a Secret holding it: serve runs as its own identity, not the consumer's" $key) (get $.Values.serve.secret $key) | b64enc | quote }}
{{- end }}
{{- if $.Values.serve.oidc.clientId }}
IMGSTREAM_OIDC_CLIENT_SECRET: {{ required "serve.secret.IMGSTREAM_OIDC_CLIENT_SECRET is required with serve.oidc.clientId unless serve.existingSecret names a Secret holding it" $.Values.serve.secret.IMGSTREAM_OIDC_CLIENT_SECRET | b64enc | quote }}
{{- end }}
{{- end }}
