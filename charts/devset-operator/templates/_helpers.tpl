{{/* The chart's name. */}}
{{- define "devset.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name when it already holds the chart's name. */}}
{{- define "devset.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "devset.selectorLabels" -}}
app.kubernetes.io/name: {{ include "devset.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "devset.labels" -}}
{{ include "devset.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: devset
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "devset.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "devset.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ClusterRole that grants the RBAC verb approve on workflowruns. */}}
{{- define "devset.approverRoleName" -}}
{{- default (printf "%s-approver" (include "devset.fullname" .)) .Values.approverRole.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "devset.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Fails on combinations that cannot work. */}}
{{- define "devset.validate" -}}
{{- if not (has .Values.store.type (list "sqlite" "postgres")) }}
{{- fail (printf "store.type must be sqlite or postgres, not %q" .Values.store.type) }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (ne .Values.store.type "postgres") }}
{{- fail "replicas > 1 requires store.type=postgres: each pod's SQLite file is its own, so the API sidecars of the standby replicas would serve empty event logs" }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 requires leaderElection.enabled=true: two controllers must never drive the same run" }}
{{- end }}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.postgres.secretRef.name) }}
{{- fail "store.type=postgres requires store.postgres.secretRef.name: a Secret whose key (store.postgres.secretRef.key, default url) holds postgres://USER:PASSWORD@HOST:PORT/DB" }}
{{- end }}
{{- range .Values.approverRole.aggregateTo }}
{{- if not (has . (list "admin" "edit" "view")) }}
{{- fail (printf "approverRole.aggregateTo takes admin, edit or view, not %q" .) }}
{{- end }}
{{- end }}
{{- if not (has .Values.api.auth (list "kubernetes" "none")) }}
{{- fail (printf "api.auth must be kubernetes or none, not %q" .Values.api.auth) }}
{{- end }}
{{- end }}

{{/* Environment shared by both containers. */}}
{{- define "devset.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
{{- if .Values.watchNamespaces }}
- name: DEVSET_NAMESPACE
  value: {{ join "," .Values.watchNamespaces | quote }}
{{- end }}
{{- if eq .Values.store.type "postgres" }}
- name: DEVSET_EVENT_STORE
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.postgres.secretRef.name }}
      key: {{ .Values.store.postgres.secretRef.key | default "url" }}
{{- else }}
- name: DEVSET_EVENT_STORE
  value: sqlite:///data/events.db
{{- end }}
{{- end }}

{{- define "devset.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
