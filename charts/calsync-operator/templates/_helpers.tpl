{{/* The chart name, or nameOverride. */}}
{{- define "calsync-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name when it already
contains the chart name, else both joined. Kubernetes limits names to 63 characters.
*/}}
{{- define "calsync-operator.fullname" -}}
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
The name of cluster-scoped objects. It contains the release namespace, so that releases of
the same name in two namespaces do not overwrite each other's ClusterRoles.
*/}}
{{- define "calsync-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "calsync-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "calsync-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "calsync-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "calsync-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "calsync-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: calsync-operator
{{- end }}

{{- define "calsync-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "calsync-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "calsync-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "calsync-operator.tokenSecretNamespace" -}}
{{- default .Release.Namespace .Values.token.secretNamespace }}
{{- end }}

{{- define "calsync-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.leaseNamespace }}
{{- end }}

{{/* The folder where the token Secret is mounted when token.source is file. */}}
{{- define "calsync-operator.tokenMountPath" -}}
/var/run/secrets/calsync.dev/token
{{- end }}

{{/* The folder where the CA bundle ConfigMap is mounted. */}}
{{- define "calsync-operator.caBundleMountPath" -}}
/etc/calsync-operator/ca
{{- end }}

{{/*
The number of seconds in a duration such as 30s, 5m or 1h; values.schema.json admits only
these forms.
*/}}
{{- define "calsync-operator.durationSeconds" -}}
{{- $number := int (trimSuffix "s" (trimSuffix "m" (trimSuffix "h" .))) }}
{{- if hasSuffix "h" . }}
{{- mul $number 3600 }}
{{- else if hasSuffix "m" . }}
{{- mul $number 60 }}
{{- else }}
{{- $number }}
{{- end }}
{{- end }}

{{/*
The `calsync-operator run` command line. toYaml quotes every value that YAML would read
differently, such as a label selector with a colon or a leading "!".
*/}}
{{- define "calsync-operator.args" -}}
{{- $url := required "mytimetable.url is required: the MyTimetable base URL ending in /api/v0, for example --set mytimetable.url=https://mytimetable.example.edu/api/v0" .Values.mytimetable.url }}
{{- $args := list "run" (printf "--mytimetable-url=%s" $url) }}
{{- if eq .Values.token.source "file" }}
{{- $args = append $args (printf "--token-file=%s/%s" (include "calsync-operator.tokenMountPath" .) .Values.token.secretKey) }}
{{- else }}
{{- $args = append $args (printf "--token-secret-namespace=%s" (include "calsync-operator.tokenSecretNamespace" .)) }}
{{- $args = append $args (printf "--token-secret-name=%s" .Values.token.secretName) }}
{{- $args = append $args (printf "--token-secret-key=%s" .Values.token.secretKey) }}
{{- end }}
{{- if .Values.mytimetable.caBundle.configMapName }}
{{- $args = append $args (printf "--ca-bundle=%s/%s" (include "calsync-operator.caBundleMountPath" .) .Values.mytimetable.caBundle.key) }}
{{- end }}
{{- with .Values.watchNamespaces }}
{{- $args = append $args (printf "--namespaces=%s" (join "," .)) }}
{{- end }}
{{- with .Values.labelSelector }}
{{- $args = append $args (printf "--label-selector=%s" .) }}
{{- end }}
{{- $args = append $args (printf "--resync-interval=%s" .Values.resyncInterval) }}
{{- $args = append $args (printf "--requests-per-second=%d" (int .Values.requestsPerSecond)) }}
{{- $args = append $args (printf "--max-concurrent-requests=%d" (int .Values.maxConcurrentRequests)) }}
{{- $args = append $args (printf "--request-timeout=%s" .Values.requestTimeout) }}
{{- $args = append $args (printf "--max-concurrent-reconciles=%d" (int .Values.maxConcurrentReconciles)) }}
{{- $args = append $args (printf "--http-listen=0.0.0.0:%d" (int .Values.httpPort)) }}
{{- $args = append $args (printf "--leader-election=%t" .Values.leaderElection.enabled) }}
{{- if .Values.leaderElection.enabled }}
{{- $args = append $args (printf "--lease-name=%s" .Values.leaderElection.leaseName) }}
{{- $args = append $args (printf "--lease-namespace=%s" (include "calsync-operator.leaseNamespace" .)) }}
{{- end }}
{{- $args = append $args (printf "--log-format=%s" .Values.logFormat) }}
{{- $args = append $args (printf "--log-level=%s" .Values.logLevel) }}
{{- $args = append $args (printf "--shutdown-grace-period=%s" .Values.shutdownGracePeriod) }}
{{- toYaml $args }}
{{- end }}
