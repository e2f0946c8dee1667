{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "blkio-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name contains it. */}}
{{- define "blkio-agent.fullname" -}}
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

{{- define "blkio-agent.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "blkio-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blkio-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "blkio-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object but the helm test pod (which the Service must not select). */}}
{{- define "blkio-agent.labels" -}}
{{ include "blkio-agent.selectorLabels" . }}
app.kubernetes.io/component: node-agent
{{ include "blkio-agent.releaseLabels" . }}
{{- end }}

{{- define "blkio-agent.releaseLabels" -}}
helm.sh/chart: {{ include "blkio-agent.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: blkio-agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "blkio-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "blkio-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "blkio-agent.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The OTLP endpoint, empty when OTLP is off. $(HOST_IP) is expanded by the kubelet. */}}
{{- define "blkio-agent.otlpEndpoint" -}}
{{- if .Values.otlp.endpoint }}
{{- .Values.otlp.endpoint }}
{{- else if .Values.otlp.nodeLocalCollector }}
{{- if eq .Values.otlp.protocol "grpc" }}http://$(HOST_IP):4317{{ else }}http://$(HOST_IP):4318{{ end }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding OTEL_EXPORTER_OTLP_HEADERS, empty when there are no headers. */}}
{{- define "blkio-agent.otlpHeadersSecret" -}}
{{- if .Values.otlp.headersSecret.name }}
{{- .Values.otlp.headersSecret.name }}
{{- else if .Values.otlp.headers }}
{{- printf "%s-otlp-headers" (include "blkio-agent.fullname" .) }}
{{- end }}
{{- end }}

{{/* OTEL_RESOURCE_ATTRIBUTES from otlp.resourceAttributes (the agent adds k8s.node.name,
k8s.pod.name, k8s.namespace.name and k8s.pod.uid itself from the downward API variables). */}}
{{- define "blkio-agent.resourceAttributes" -}}
{{- $attrs := list }}
{{- range $k, $v := .Values.otlp.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $attrs }}
{{- end }}

{{/* The pre-1.30 AppArmor annotation value for securityContext.appArmorProfile. */}}
{{- define "blkio-agent.appArmorAnnotation" -}}
{{- $p := .Values.securityContext.appArmorProfile }}
{{- if eq $p.type "Localhost" }}
{{- printf "localhost/%s" $p.localhostProfile }}
{{- else if eq $p.type "Unconfined" }}
{{- "unconfined" }}
{{- else }}
{{- "runtime/default" }}
{{- end }}
{{- end }}
