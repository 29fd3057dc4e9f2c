{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "perisai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "perisai.fullname" -}}
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

{{- define "perisai.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "perisai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "perisai.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "perisai.labels" -}}
helm.sh/chart: {{ include "perisai.chart" . }}
{{ include "perisai.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
The retro role (`perisai retro`, retro.enabled): its own name and selector labels, so that
nothing selecting the workers (their Deployment, Service, PDB, HPA, NetworkPolicy) selects it.
*/}}
{{- define "perisai.retroFullname" -}}
{{- printf "%s-retro" (include "perisai.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "perisai.retroSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-retro" (include "perisai.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "perisai.retroLabels" -}}
helm.sh/chart: {{ include "perisai.chart" . }}
{{ include "perisai.retroSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: retro
app.kubernetes.io/part-of: {{ include "perisai.name" . }}
{{- end }}

{{- define "perisai.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "perisai.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "perisai.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Container port of /metrics, /healthz and /readyz, from config.metrics.listen (host:port). */}}
{{- define "perisai.metricsPort" -}}
{{- $listen := toString .Values.config.metrics.listen }}
{{- if not (regexMatch ":[0-9]+$" $listen) }}
{{- fail (printf "config.metrics.listen %q must end in :PORT" $listen) }}
{{- end }}
{{- regexFind "[0-9]+$" $listen }}
{{- end }}

{{/* The drain bound in whole seconds, rounded up. */}}
{{- define "perisai.drainSeconds" -}}
{{- $ms := int64 (default 10000 .Values.config.worker.drain_timeout_ms) }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/* terminationGracePeriodSeconds: computed from the drain bound, or the given value if it exceeds it. */}}
{{- define "perisai.terminationGrace" -}}
{{- $drain := int64 (include "perisai.drainSeconds" .) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain (int64 .Values.terminationGraceExtraSeconds) }}
{{- else }}
{{- $given := int64 .Values.terminationGracePeriodSeconds }}
{{- if le $given $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed the drain bound config.worker.drain_timeout_ms (%ds): a worker killed mid-drain leaves its in-flight events uncommitted" $given $drain) }}
{{- end }}
{{- $given }}
{{- end }}
{{- end }}

{{/* kafka.security.protocol from kafkaAuth, or "" when neither TLS nor SASL is configured. */}}
{{- define "perisai.securityProtocol" -}}
{{- $a := .Values.kafkaAuth }}
{{- if $a.securityProtocol }}
{{- $a.securityProtocol }}
{{- else if and $a.tls.enabled $a.sasl.mechanism }}SASL_SSL
{{- else if $a.sasl.mechanism }}SASL_PLAINTEXT
{{- else if $a.tls.enabled }}SSL
{{- end }}
{{- end }}

{{/*
The configuration rendered into the ConfigMap: .Values.config with kafkaAuth's file paths and
mechanism merged into kafka.client. Secrets (passwords) never pass through here: they are env.
*/}}
{{/*
The checksum that rolls the workers when their configuration changes. With policyReload.live
the [policy] table is left out: workers notice the updated ConfigMap file and reload the policy
themselves, without a restart (retro replicas, which read it at start, still roll).
*/}}
{{- define "perisai.workerConfigChecksum" -}}
{{- if .Values.policyReload.live -}}
{{- $values := deepCopy .Values }}
{{- $_ := unset $values.config "policy" }}
{{- include "perisai.config" (dict "Values" $values "Release" .Release "Chart" .Chart "Capabilities" .Capabilities "Template" .Template) | sha256sum }}
{{- else -}}
{{- include "perisai.config" . | sha256sum }}
{{- end -}}
{{- end -}}

{{- define "perisai.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $kafka := $cfg.kafka }}
{{- $client := default (dict) $kafka.client }}
{{- $a := .Values.kafkaAuth }}
{{- $proto := include "perisai.securityProtocol" . }}
{{- if $proto }}
{{- $_ := set $client "security.protocol" $proto }}
{{- end }}
{{- if and $a.tls.enabled $a.tls.existingSecret }}
{{- if $a.tls.caKey }}
{{- $_ := set $client "ssl.ca.location" (printf "%s/%s" $a.tls.mountPath $a.tls.caKey) }}
{{- end }}
{{- if $a.tls.certKey }}
{{- $_ := set $client "ssl.certificate.location" (printf "%s/%s" $a.tls.mountPath $a.tls.certKey) }}
{{- end }}
{{- if $a.tls.keyKey }}
{{- $_ := set $client "ssl.key.location" (printf "%s/%s" $a.tls.mountPath $a.tls.keyKey) }}
{{- end }}
{{- end }}
{{- if $a.sasl.mechanism }}
{{- $_ := set $client "sasl.mechanisms" $a.sasl.mechanism }}
{{- end }}
{{- $_ := set $kafka "client" $client }}
{{- include "perisai.tomlTable" (dict "path" "" "table" $cfg) }}
{{- end }}

{{/*
A small TOML writer. Helm's toToml prints every number as a float (values arrive as float64:
256 -> 256.0, 50000000 -> 5e+07); this one prints whole numbers as integers and quotes keys
that are not bare (librdkafka options such as "sasl.mechanisms").
*/}}
{{- define "perisai.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "perisai.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if kindIs "float64" $v }}{{ if eq $v (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "perisai.tomlValue" $e }}{{ end }}]
{{- else }}{{ fail (printf "config: cannot write %v (%s) as a TOML value" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{- define "perisai.isTableArray" -}}
{{- if and (kindIs "slice" .) (not (empty .)) }}{{ if kindIs "map" (first .) }}true{{ end }}{{ end }}
{{- end }}

{{- define "perisai.tomlTable" -}}
{{- $path := .path }}
{{- $t := .table }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "perisai.isTableArray" $v)) }}
{{ include "perisai.tomlKey" $k }} = {{ include "perisai.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- $p := include "perisai.tomlKey" $k }}
{{- if $path }}{{ $p = printf "%s.%s" $path $p }}{{ end }}
{{- if kindIs "map" $v }}

[{{ $p }}]
{{- include "perisai.tomlTable" (dict "path" $p "table" $v) }}
{{- else if include "perisai.isTableArray" $v }}
{{- range $item := $v }}

[[{{ $p }}]]
{{- include "perisai.tomlTable" (dict "path" $p "table" $item) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* PromQL label matchers that select this release's series. */}}
{{- define "perisai.promSelector" -}}
{{- if .Values.metrics.selector }}
{{- .Values.metrics.selector }}
{{- else }}
{{- printf "namespace=%q, service=%q" .Release.Namespace (include "perisai.fullname" .) }}
{{- end }}
{{- end }}

{{/* Rendering fails on combinations that cannot work, naming the values to fix. */}}
{{- define "perisai.validate" -}}
{{- $v := .Values }}
{{- if not (has $v.workload (list "Deployment" "StatefulSet")) }}
{{- fail (printf "workload %q is not Deployment or StatefulSet" $v.workload) }}
{{- end }}
{{- if and $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled }}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are mutually exclusive: both would set the replica count" }}
{{- end }}
{{- if gt (int64 $v.inputPartitions) 0 }}
{{- $parts := int64 $v.inputPartitions }}
{{- if and (not $v.autoscaling.keda.enabled) (not $v.autoscaling.hpa.enabled) (gt (int64 $v.replicaCount) $parts) }}
{{- fail (printf "replicaCount (%d) exceeds inputPartitions (%d): replicas beyond the partition count get no partition and sit idle" (int64 $v.replicaCount) $parts) }}
{{- end }}
{{- if and $v.autoscaling.keda.enabled (gt (int64 $v.autoscaling.keda.maxReplicas) $parts) }}
{{- fail (printf "autoscaling.keda.maxReplicas (%d) exceeds inputPartitions (%d)" (int64 $v.autoscaling.keda.maxReplicas) $parts) }}
{{- end }}
{{- if and $v.autoscaling.hpa.enabled (gt (int64 $v.autoscaling.hpa.maxReplicas) $parts) }}
{{- fail (printf "autoscaling.hpa.maxReplicas (%d) exceeds inputPartitions (%d)" (int64 $v.autoscaling.hpa.maxReplicas) $parts) }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.keda.enabled (eq $v.autoscaling.keda.trigger "prometheus") (not $v.autoscaling.keda.prometheus.serverAddress) }}
{{- fail "autoscaling.keda.trigger=prometheus needs autoscaling.keda.prometheus.serverAddress" }}
{{- end }}
{{- if not (has $v.autoscaling.keda.trigger (list "prometheus" "kafka")) }}
{{- fail (printf "autoscaling.keda.trigger %q is not prometheus or kafka" $v.autoscaling.keda.trigger) }}
{{- end }}
{{- if and $v.networkPolicy.enabled (empty $v.networkPolicy.kafka.to) }}
{{- fail "networkPolicy.enabled needs networkPolicy.kafka.to (the brokers' CIDRs or selectors): without it the workers cannot reach Kafka" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not (empty $v.config.media.http.allow_hosts)) (empty $v.networkPolicy.media.to) }}
{{- fail "config.media.http.allow_hosts is set but networkPolicy.media.to is empty: URL media would be blocked by the NetworkPolicy" }}
{{- end }}
{{- if and $v.kafkaAuth.sasl.mechanism (not $v.kafkaAuth.sasl.existingSecret) }}
{{- fail "kafkaAuth.sasl.mechanism needs kafkaAuth.sasl.existingSecret (credentials are never taken from values)" }}
{{- end }}
{{- if and $v.kafkaAuth.sasl.mechanism (not (has $v.kafkaAuth.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512"))) }}
{{- fail (printf "kafkaAuth.sasl.mechanism %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" $v.kafkaAuth.sasl.mechanism) }}
{{- end }}
{{- if and (or $v.kafkaAuth.tls.certKey $v.kafkaAuth.tls.keyKey $v.kafkaAuth.tls.keyPasswordKey) (not $v.kafkaAuth.tls.existingSecret) }}
{{- fail "kafkaAuth.tls.certKey/keyKey/keyPasswordKey need kafkaAuth.tls.existingSecret" }}
{{- end }}
{{- if not (has $v.classifierFiles.source (list "image" "initContainer")) }}
{{- fail (printf "classifierFiles.source %q is not image or initContainer" $v.classifierFiles.source) }}
{{- end }}
{{- if and (eq $v.classifierFiles.source "initContainer") (not $v.classifierFiles.initContainer.image) }}
{{- fail "classifierFiles.source=initContainer needs classifierFiles.initContainer.image" }}
{{- end }}
{{- if $v.retro.enabled }}
{{- if eq (toString $v.config.retro.group_id) (toString $v.config.kafka.group_id) }}
{{- fail "config.retro.group_id must differ from config.kafka.group_id: the retro role needs its own consumer group on the verdict topic" }}
{{- end }}
{{- if and (gt (int64 $v.retro.verdictPartitions) 0) (gt (int64 $v.retro.replicaCount) (int64 $v.retro.verdictPartitions)) }}
{{- fail (printf "retro.replicaCount (%d) exceeds retro.verdictPartitions (%d): retro replicas beyond the verdict topic's partition count get no partition and sit idle" (int64 $v.retro.replicaCount) (int64 $v.retro.verdictPartitions)) }}
{{- end }}
{{- end }}
{{- range $i, $bank := $v.config.banks }}
{{- if and (hasPrefix (printf "%s/" $v.bankFiles.mountPath) (toString $bank.file)) (empty $v.bankFiles.volume) }}
{{- fail (printf "config.banks[%d].file %q is under bankFiles.mountPath but bankFiles.volume is empty: the file would not exist in the pod" $i $bank.file) }}
{{- end }}
{{- end }}
{{- end }}
