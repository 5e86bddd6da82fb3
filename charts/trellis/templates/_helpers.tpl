{{/* Name of the operator's Deployment, ServiceAccount, ClusterRole(Binding) and Role(Binding). */}}
{{- define "trellis.operatorName" -}}trellis-operator{{- end }}

{{/* Name of the node agent's objects; fixed by the operator (operator/src/render/agent.rs). */}}
{{- define "trellis.agentName" -}}trellis-agent{{- end }}

{{/* Labels of the operator pods (and the Deployment's selector). */}}
{{- define "trellis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trellis.operatorName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "trellis.labels" -}}
{{ include "trellis.selectorLabels" . }}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The operator image. */}}
{{- define "trellis.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The agent image passed to the operator. */}}
{{- define "trellis.agentImage" -}}
{{ .Values.agent.image | default (printf "trellis/agent:%s" .Chart.AppVersion) }}
{{- end }}

{{/* Checks across values that the schema cannot express with a clear message. */}}
{{- define "trellis.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicas=%d needs leaderElection.enabled=true: without leader election every replica writes" (int .Values.replicas)) }}
{{- end }}
{{- end }}
