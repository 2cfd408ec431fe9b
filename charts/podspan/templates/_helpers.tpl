{{/* Labels on every object: the kustomize tree's part-of label, and Helm's bookkeeping. */}}
{{- define "podspan.labels" -}}
app.kubernetes.io/part-of: podspan
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* repository:tag of an image value; the tag defaults to the chart's appVersion. */}}
{{- define "podspan.image" -}}
{{ .image.repository }}:{{ .image.tag | default .chart.AppVersion }}
{{- end }}
