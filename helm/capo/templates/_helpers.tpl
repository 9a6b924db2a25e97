{{/*
Names. The operator is a cluster singleton (one IPReservation, one webhook configuration), so names
do not depend on the release name; nameOverride/fullnameOverride rename the Deployment, its
ServiceAccount, RBAC and PodDisruptionBudget. Objects other components look up by name
(capo-config, capo-webhook, capo-metrics, capo-webhook-tls, the webhook configuration capo-operator,
the Lease capo) keep their documented names.
*/}}
{{- define "capo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- default "capo-operator" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "capo.namespace" -}}
{{- default .Release.Namespace .Values.namespace -}}
{{- end -}}

{{- define "capo.labels" -}}
app.kubernetes.io/name: capo-operator
app.kubernetes.io/part-of: capo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "capo.selectorLabels" -}}
app.kubernetes.io/name: capo-operator
app.kubernetes.io/component: operator
{{- end -}}

{{/* ":8081" -> 8081 */}}
{{- define "capo.port" -}}
{{- . | toString | splitList ":" | last -}}
{{- end -}}

{{- define "capo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
