{{/*
Names and labels.
Component helpers take (dict "root" $ "component" "<binary name>").
*/}}
{{- define "cp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cp.fullname" -}}
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

{{- define "cp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* 52 characters at most: a StatefulSet's controller-revision-hash label adds 11. */}}
{{- define "cp.componentName" -}}
{{- printf "%s-%s" (include "cp.fullname" .root) .component | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "cp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cp.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cp.labels" -}}
helm.sh/chart: {{ include "cp.chart" .root }}
{{ include "cp.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: context-pipeline
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Every pod of the release, Jobs included (NetworkPolicy peers). */}}
{{- define "cp.releaseSelector" -}}
app.kubernetes.io/name: {{ include "cp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cp.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end }}

{{- define "cp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/*
The container port of each service: the SPEC's default port, bound on all
interfaces (the binaries default to 127.0.0.1).
*/}}
{{- define "cp.port.ingest-gateway" -}}8080{{- end }}
{{- define "cp.port.schema-registry" -}}8081{{- end }}
{{- define "cp.port.stream-router" -}}9101{{- end }}
{{- define "cp.port.sink-clickhouse" -}}9102{{- end }}
{{- define "cp.port.enrich-activity" -}}9103{{- end }}

{{/* Paths inside the containers. The rules path is where the Dockerfile copies stream-router/rules.toml. */}}
{{- define "cp.configDir" -}}/etc/context-pipeline/config{{- end }}
{{- define "cp.keysDir" -}}/etc/context-pipeline/keys{{- end }}
{{- define "cp.tlsDir" -}}/etc/context-pipeline/tls{{- end }}
{{- define "cp.rulesDir" -}}/etc/context-pipeline/rules{{- end }}
{{- define "cp.shippedRules" -}}/usr/share/context-pipeline/rules.toml{{- end }}
{{- define "cp.modelDir" -}}/var/lib/context-pipeline/model{{- end }}
{{- define "cp.shippedModel" -}}/usr/share/context-pipeline/models/basicmotions.json{{- end }}
{{- define "cp.topicsDir" -}}/etc/context-pipeline/topics{{- end }}

{{- define "cp.registryUrl" -}}
{{- if .Values.schemaRegistry.enabled -}}
http://{{ include "cp.componentName" (dict "root" . "component" "schema-registry") }}.{{ .Release.Namespace }}.svc:{{ .Values.schemaRegistry.service.port }}
{{- else -}}
{{ required "schemaRegistry.externalUrl is required when schemaRegistry.enabled=false" .Values.schemaRegistry.externalUrl }}
{{- end -}}
{{- end }}

{{- define "cp.kafkaBootstrap" -}}
{{- required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers -}}
{{- end }}

{{/*
TOML rendering of a values map: scalars first, then one [table] per nested
map. Integral numbers are written as integers (Helm reads every number of a
values file as a float, and the services' integer keys refuse 2000.0); null
leaves a key out, so the service's default applies.
*/}}
{{- define "cp.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end -}}
{{- end }}

{{- define "cp.tomlValue" -}}
{{- if kindIs "string" . -}}
{{ toJson . }}
{{- else if kindIs "bool" . -}}
{{ . }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) -}}
{{ . }}
{{- else if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "cp.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" . -}}
{ {{- $first := true }}{{ range $k := keys . | sortAlpha }}{{ if not $first }},{{ end }}{{ $first = false }} {{ include "cp.tomlKey" $k }} = {{ include "cp.tomlValue" (get $ $k) }}{{ end }} }
{{- else -}}
{{ fail (printf "cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end -}}
{{- end }}

{{- define "cp.toml" -}}
{{- $table := .table -}}
{{- $prefix := .prefix -}}
{{- $lines := list -}}
{{- range $k := keys $table | sortAlpha -}}
{{- $v := get $table $k -}}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) -}}
{{- $lines = append $lines (printf "%s = %s" (include "cp.tomlKey" $k) (include "cp.tomlValue" $v)) -}}
{{- end -}}
{{- end -}}
{{- range $k := keys $table | sortAlpha -}}
{{- $v := get $table $k -}}
{{- if kindIs "map" $v -}}
{{- $name := include "cp.tomlKey" $k -}}
{{- if $prefix }}{{ $name = printf "%s.%s" $prefix $name }}{{ end -}}
{{- $lines = append $lines (printf "\n[%s]" $name) -}}
{{- $sub := include "cp.toml" (dict "table" $v "prefix" $name) -}}
{{- if $sub }}{{ $lines = append $lines $sub }}{{ end -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end }}

{{/*
The TOML file of each service: the `config` section of its values with the
release's wiring laid over it.
*/}}
{{- define "cp.config.ingest-gateway" -}}
{{- $v := .Values.ingestGateway -}}
{{- $c := deepCopy ($v.config | default dict) -}}
{{- $_ := set $c "listen" (printf "0.0.0.0:%s" (include "cp.port.ingest-gateway" .)) -}}
{{- $_ = unset $c "kafka_bootstrap" -}}
{{- $_ = set $c "kafka" (include "cp.kafkaTable" . | fromJson) -}}
{{- $_ = set $c "registry_url" (include "cp.registryUrl" .) -}}
{{- include "cp.setRegistryClient" (dict "root" . "table" $c) -}}
{{- $_ = set $c "events_topic" .Values.kafka.topics.events -}}
{{- $_ = set $c "deadletter_topic" .Values.kafka.topics.deadletter -}}
{{- $_ = set $c "forget_topic" .Values.kafka.topics.forget -}}
{{- $_ = set $c "keys_file" (printf "%s/%s" (include "cp.keysDir" .) $v.apiKeys.secretKey) -}}
{{- if $v.tls.enabled -}}
{{- $_ = set $c "tls_cert" (printf "%s/tls.crt" (include "cp.tlsDir" .)) -}}
{{- $_ = set $c "tls_key" (printf "%s/tls.key" (include "cp.tlsDir" .)) -}}
{{- else -}}
{{- $_ = unset $c "tls_cert" -}}
{{- $_ = unset $c "tls_key" -}}
{{- end -}}
# ingest-gateway, rendered by the context-pipeline chart (docs/ingest-gateway.md).
{{ include "cp.toml" (dict "table" $c) }}
{{ end }}

{{- define "cp.config.schema-registry" -}}
{{- $c := deepCopy (.Values.schemaRegistry.config | default dict) -}}
{{- $_ := set $c "listen" (printf "0.0.0.0:%s" (include "cp.port.schema-registry" .)) -}}
{{- $_ = unset $c "kafka_bootstrap" -}}
{{- $_ = set $c "kafka" (include "cp.kafkaTable" . | fromJson) -}}
{{- $_ = set $c "topic" .Values.kafka.topics.schemas -}}
{{- $a := .Values.schemaRegistry.auth -}}
{{- if include "cp.registryServerAuth" . -}}
{{- $_ = set $c "auth" (dict "users_file" (printf "%s/%s" (include "cp.registryUsersDir" .) $a.secretKey) "anonymous" $a.anonymous) -}}
{{- else -}}
{{- $_ = unset $c "auth" -}}
{{- end -}}
# schema-registry, rendered by the context-pipeline chart (README.md, "Schema Registry").
{{ include "cp.toml" (dict "table" $c) }}
{{ end }}

{{- define "cp.config.stream-router" -}}
{{- $v := .Values.streamRouter -}}
{{- $c := deepCopy ($v.config | default dict) -}}
{{- $_ := set $c "admin_listen" (printf "0.0.0.0:%s" (include "cp.port.stream-router" .)) -}}
{{- $_ = unset $c "kafka_bootstrap" -}}
{{- $_ = set $c "kafka" (include "cp.kafkaTable" . | fromJson) -}}
{{- $_ = set $c "registry_url" (include "cp.registryUrl" .) -}}
{{- include "cp.setRegistryClient" (dict "root" . "table" $c) -}}
{{- $_ = set $c "source_topic" .Values.kafka.topics.events -}}
{{- $_ = set $c "deadletter_topic" .Values.kafka.topics.deadletter -}}
{{- $_ = set $c "forget_topic" .Values.kafka.topics.forget -}}
{{- if $v.rules -}}
{{- $_ = set $c "rules_file" (printf "%s/rules.toml" (include "cp.rulesDir" .)) -}}
{{- else -}}
{{- $_ = set $c "rules_file" (include "cp.shippedRules" .) -}}
{{- end -}}
{{- /* Set per pod in the environment (ROUTER_TRANSACTIONAL_ID). */ -}}
{{- $_ = unset $c "transactional_id" -}}
# stream-router, rendered by the context-pipeline chart (docs/stream-router.md).
{{ include "cp.toml" (dict "table" $c) }}
{{ end }}

{{- define "cp.config.sink-clickhouse" -}}
{{- $v := .Values.sinkClickhouse -}}
{{- $c := deepCopy ($v.config | default dict) -}}
{{- $_ := set $c "admin_listen" (printf "0.0.0.0:%s" (include "cp.port.sink-clickhouse" .)) -}}
{{- $_ = unset $c "kafka_bootstrap" -}}
{{- $_ = set $c "kafka" (include "cp.kafkaTable" . | fromJson) -}}
{{- $_ = set $c "registry_url" (include "cp.registryUrl" .) -}}
{{- include "cp.setRegistryClient" (dict "root" . "table" $c) -}}
{{- $_ = set $c "clickhouse_url" (required "sinkClickhouse.clickhouse.url is required" $v.clickhouse.url) -}}
{{- $_ = set $c "events_topic" (ternary .Values.kafka.topics.events "" $v.sources.events) -}}
{{- $_ = set $c "activity_topic" (ternary .Values.kafka.topics.activity "" $v.sources.activity) -}}
{{- $_ = set $c "deadletter_topic" (ternary .Values.kafka.topics.deadletter "" $v.sources.deadletter) -}}
{{- $_ = set $c "forget_topic" .Values.kafka.topics.forget -}}
{{- /* Credentials come from the Secret, through the environment. */ -}}
{{- $_ = unset $c "clickhouse_user" -}}
{{- $_ = unset $c "clickhouse_password" -}}
{{- if include "cp.caSource" $v.clickhouse.ca -}}
{{- $_ = set $c "clickhouse_ca_file" (printf "%s/ca.crt" (include "cp.clickhouseCaDir" .)) -}}
{{- else -}}
{{- $_ = unset $c "clickhouse_ca_file" -}}
{{- end -}}
# sink-clickhouse, rendered by the context-pipeline chart (docs/sink-clickhouse.md).
# clickhouse_user and clickhouse_password come from a Secret (SINK_CLICKHOUSE_USER, SINK_CLICKHOUSE_PASSWORD),
# like every password (SINK_KAFKA_SASL_PASSWORD, SINK_REGISTRY_PASSWORD).
{{ include "cp.toml" (dict "table" $c) }}
{{ end }}

{{- define "cp.config.enrich-activity" -}}
{{- $v := .Values.enrichActivity -}}
{{- $c := deepCopy ($v.config | default dict) -}}
{{- $_ := set $c "admin_listen" (printf "0.0.0.0:%s" (include "cp.port.enrich-activity" .)) -}}
{{- $_ = unset $c "kafka_bootstrap" -}}
{{- $_ = set $c "kafka" (include "cp.kafkaTable" . | fromJson) -}}
{{- $_ = set $c "registry_url" (include "cp.registryUrl" .) -}}
{{- include "cp.setRegistryClient" (dict "root" . "table" $c) -}}
{{- $_ = set $c "motion_topic" .Values.kafka.topics.motion -}}
{{- $_ = set $c "activity_topic" .Values.kafka.topics.activity -}}
{{- $_ = set $c "deadletter_topic" .Values.kafka.topics.deadletter -}}
{{- $_ = set $c "forget_topic" .Values.kafka.topics.forget -}}
{{- $_ = set $c "model" (include "cp.modelPath" .) -}}
{{- $_ = unset $c "transactional_id" -}}
# enrich-activity serve, rendered by the context-pipeline chart (docs/enrich-activity.md).
{{ include "cp.toml" (dict "table" $c) }}
{{ end }}

{{- define "cp.modelPath" -}}
{{- $m := .Values.enrichActivity.model -}}
{{- if eq $m.source "image" -}}
{{ include "cp.shippedModel" . }}
{{- else -}}
{{ include "cp.modelDir" . }}/{{ $m.fileName }}
{{- end -}}
{{- end }}

{{- define "cp.modelConfigMapName" -}}
{{- $m := .Values.enrichActivity.model.configMap -}}
{{- if $m.name -}}
{{ $m.name }}
{{- else -}}
{{ include "cp.componentName" (dict "root" . "component" "activity-model") }}
{{- end -}}
{{- end }}

{{- define "cp.clickhouseSecretName" -}}
{{- if .Values.sinkClickhouse.clickhouse.existingSecret -}}
{{ .Values.sinkClickhouse.clickhouse.existingSecret }}
{{- else -}}
{{ include "cp.componentName" (dict "root" . "component" "clickhouse") }}
{{- end -}}
{{- end }}

{{- define "cp.keysSecretName" -}}
{{- if .Values.ingestGateway.apiKeys.existingSecret -}}
{{ .Values.ingestGateway.apiKeys.existingSecret }}
{{- else -}}
{{ include "cp.componentName" (dict "root" . "component" "api-keys") }}
{{- end -}}
{{- end }}

{{/*
Pod pieces shared by every workload.
(dict "root" $ "component" "<name>" "values" <section>)
*/}}
{{- define "cp.podAnnotations" -}}
{{- $root := .root -}}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include (printf "cp.port.%s" .component) $root | quote }}
prometheus.io/path: /metrics
{{- with .scheme }}
prometheus.io/scheme: {{ . }}
{{- end }}
{{- end }}
{{- with .checksum }}
checksum/config: {{ . }}
{{- end }}
{{- with .secretsChecksum }}
checksum/secrets: {{ . }}
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cp.podSpecCommon" -}}
{{- $root := .root -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "cp.serviceAccountName" $root }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .values.terminationGracePeriodSeconds }}
terminationGracePeriodSeconds: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Probes on the service's own port: startup and liveness on /healthz, readiness on /readyz. */}}
{{- define "cp.probes" -}}
{{- $scheme := .scheme | default "HTTP" -}}
{{- $p := .values.probes -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .portName }}, scheme: {{ $scheme }}}
  {{- toYaml $p.startup | nindent 2 }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .portName }}, scheme: {{ $scheme }}}
  {{- toYaml $p.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: {{ .portName }}, scheme: {{ $scheme }}}
  {{- toYaml $p.readiness | nindent 2 }}
{{- end }}

{{- define "cp.env" -}}
- name: RUST_LOG
  value: {{ .root.Values.logLevel | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cp.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* PodDisruptionBudget of a workload. */}}
{{- define "cp.pdb" -}}
{{- $root := .root -}}
{{- $own := .values.pdb | default dict -}}
{{- $enabled := ternary $own.enabled $root.Values.pdb.enabled (hasKey $own "enabled") -}}
{{- if $enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "cp.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "cp.labels" . | nindent 4 }}
spec:
  {{- if hasKey $own "minAvailable" }}
  minAvailable: {{ $own.minAvailable }}
  {{- else }}
  maxUnavailable: {{ ternary $own.maxUnavailable $root.Values.pdb.maxUnavailable (hasKey $own "maxUnavailable") }}
  {{- end }}
  # Unready pods (a consumer paused by a ClickHouse or Kafka outage) may
  # always be evicted, so they never block a node drain.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "cp.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* A KEDA ScaledObject on the lag of one or more consumer groups. */}}
{{- define "cp.scaledObject" -}}
{{- $root := .root -}}
{{- $k := .values.keda -}}
{{- if $k.enabled }}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "cp.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "cp.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ .kind }}
    name: {{ include "cp.componentName" . }}
  pollingInterval: {{ $k.pollingInterval }}
  cooldownPeriod: {{ $k.cooldownPeriod }}
  minReplicaCount: {{ $k.minReplicaCount }}
  maxReplicaCount: {{ $k.maxReplicaCount | default .partitions }}
  triggers:
    {{- range .groups }}
    - type: kafka
      name: {{ .name }}
      metadata:
        bootstrapServers: {{ include "cp.kafkaBootstrap" $root | quote }}
        consumerGroup: {{ .group | quote }}
        topic: {{ .topic | quote }}
        lagThreshold: {{ $k.lagThreshold | quote }}
        activationLagThreshold: {{ $k.activationLagThreshold | quote }}
        offsetResetPolicy: earliest
        allowIdleConsumers: "false"
        {{- if include "cp.kafkaSasl" $root }}
        sasl: {{ include "cp.kedaSasl" $root }}
        {{- end }}
        {{- if include "cp.kafkaTls" $root }}
        tls: enable
        {{- end }}
      {{- if $k.authenticationRef }}
      authenticationRef:
        name: {{ $k.authenticationRef }}
      {{- else if include "cp.kedaAuthNeeded" $root }}
      authenticationRef:
        name: {{ include "cp.kedaAuthName" $root }}
      {{- end }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
ClickHouse credentials of the sink, from a Secret. Takes the chart root, or
(dict "Values" .Values "secretName" NAME) for the migrate hook's own copy.
*/}}
{{- define "cp.clickhouseEnv" -}}
{{- $c := .Values.sinkClickhouse.clickhouse -}}
{{- $secret := "" -}}
{{- if .secretName -}}
{{- $secret = .secretName -}}
{{- else -}}
{{- $secret = include "cp.clickhouseSecretName" . -}}
{{- end -}}
- name: SINK_CLICKHOUSE_USER
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $c.userKey }}
      # An existing Secret may hold only the password: the user then stays `default`.
      optional: true
- name: SINK_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $c.passwordKey }}
{{- end }}
