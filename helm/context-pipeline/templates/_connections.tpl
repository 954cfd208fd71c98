{{/*
Secured connections: Kafka (SASL, TLS, mutual TLS), the schema registry
(basic auth, a private CA) and ClickHouse (HTTPS, a private CA).

Where each piece goes:
- non-secret settings (protocol, mechanism, user names, file paths) into each
  service's TOML, [kafka] table and registry_* / clickhouse_* keys;
- passwords into the environment from a Secret (secretKeyRef), never into a
  ConfigMap: the chart's own `<fullname>-connections` Secret when the values
  carry them, the operator's Secret with existingSecret;
- CA bundles and client certificates as files, mounted from a Secret or
  ConfigMap (the operator's, or the chart's `<fullname>-connections`
  ConfigMap for a CA given inline as `pem`).

Hook Jobs run before (pre-install) or while (pre-upgrade) the release's own
objects exist in their new form, so they bring copies of the chart-made
Secret and ConfigMap, named by the Job ("cp.connections" with a name).
*/}}

{{/* Paths inside the containers. */}}
{{- define "cp.kafkaCaDir" -}}/etc/context-pipeline/kafka-ca{{- end }}
{{- define "cp.kafkaClientDir" -}}/etc/context-pipeline/kafka-client{{- end }}
{{- define "cp.registryCaDir" -}}/etc/context-pipeline/registry-ca{{- end }}
{{- define "cp.clickhouseCaDir" -}}/etc/context-pipeline/clickhouse-ca{{- end }}
{{- define "cp.registryUsersDir" -}}/etc/context-pipeline/registry-users{{- end }}

{{- define "cp.connectionsName" -}}
{{ include "cp.componentName" (dict "root" . "component" "connections") }}
{{- end }}

{{- define "cp.kedaAuthName" -}}
{{ include "cp.componentName" (dict "root" . "component" "kafka") }}
{{- end }}

{{- define "cp.registryUsersSecretName" -}}
{{- if .Values.schemaRegistry.auth.existingSecret -}}
{{ .Values.schemaRegistry.auth.existingSecret }}
{{- else -}}
{{ include "cp.componentName" (dict "root" . "component" "registry-users") }}
{{- end -}}
{{- end }}

{{/* "true" or "" */}}
{{- define "cp.kafkaSasl" -}}
{{- if has .Values.kafka.securityProtocol (list "sasl_plaintext" "sasl_ssl") }}true{{ end -}}
{{- end }}

{{- define "cp.kafkaTls" -}}
{{- if has .Values.kafka.securityProtocol (list "ssl" "sasl_ssl") }}true{{ end -}}
{{- end }}

{{- define "cp.kafkaMutualTls" -}}
{{- if .Values.kafka.tls.clientCert.existingSecret }}true{{ end -}}
{{- end }}

{{- define "cp.registryClientAuth" -}}
{{- if .Values.schemaRegistry.client.username }}true{{ end -}}
{{- end }}

{{- define "cp.registryServerAuth" -}}
{{- if and .Values.schemaRegistry.enabled .Values.schemaRegistry.auth.enabled }}true{{ end -}}
{{- end }}

{{/* Where a CA bundle comes from: secret, configMap, inline or "" (the image's system CAs). */}}
{{- define "cp.caSource" -}}
{{- if .existingSecret }}secret{{ else if .existingConfigMap }}configMap{{ else if .pem }}inline{{ end -}}
{{- end }}

{{/*
The three CA bundles: (values block, volume name, mount directory, key in the
chart's ConfigMap when inline).
*/}}
{{- define "cp.cas" -}}
{{- $cas := dict
  "kafka" (dict "ca" .Values.kafka.tls.ca "volume" "kafka-ca" "dir" (include "cp.kafkaCaDir" .) "inlineKey" "kafka-ca.crt" "what" "kafka.tls.ca")
  "registry" (dict "ca" .Values.schemaRegistry.client.ca "volume" "registry-ca" "dir" (include "cp.registryCaDir" .) "inlineKey" "registry-ca.crt" "what" "schemaRegistry.client.ca")
  "clickhouse" (dict "ca" .Values.sinkClickhouse.clickhouse.ca "volume" "clickhouse-ca" "dir" (include "cp.clickhouseCaDir" .) "inlineKey" "clickhouse-ca.crt" "what" "sinkClickhouse.clickhouse.ca") -}}
{{- toJson $cas -}}
{{- end }}

{{/*
What a workload reaches: (dict "root" $ "registry" bool "clickhouse" bool
"registryUsers" bool). Every workload of the chart that runs a service talks
to Kafka.
*/}}
{{- define "cp.usedCas" -}}
{{- $cas := include "cp.cas" .root | fromJson -}}
{{- $used := list -}}
{{- if .kafka }}{{ $used = append $used $cas.kafka }}{{ end -}}
{{- if .registry }}{{ $used = append $used $cas.registry }}{{ end -}}
{{- if .clickhouse }}{{ $used = append $used $cas.clickhouse }}{{ end -}}
{{- $out := list -}}
{{- range $used }}{{ if include "cp.caSource" .ca }}{{ $out = append $out . }}{{ end }}{{ end -}}
{{- toJson $out -}}
{{- end }}

{{/*
The chart's Secret: only what the values carry. Keys:
  kafka-sasl-username   the SASL user (for KEDA, whose TriggerAuthentication reads Secrets)
  kafka-sasl-password   unless kafka.sasl.existingSecret
  registry-password     unless schemaRegistry.client.existingSecret
  registry-admin-password   the register Job's, unless schemaRegistry.register.existingSecret
*/}}
{{- define "cp.connectionsSecretData" -}}
{{- $d := dict -}}
{{- $k := .Values.kafka.sasl -}}
{{- if include "cp.kafkaSasl" . -}}
{{- $_ := set $d "kafka-sasl-username" $k.username -}}
{{- if not $k.existingSecret }}{{ $_ := set $d "kafka-sasl-password" $k.password }}{{ end -}}
{{- end -}}
{{- $c := .Values.schemaRegistry.client -}}
{{- if and (include "cp.registryClientAuth" .) (not $c.existingSecret) -}}
{{- $_ := set $d "registry-password" $c.password -}}
{{- end -}}
{{- $r := .Values.schemaRegistry.register -}}
{{- if and $r.enabled $r.username (not $r.existingSecret) -}}
{{- $_ := set $d "registry-admin-password" $r.password -}}
{{- end -}}
{{- toJson $d -}}
{{- end }}

{{- define "cp.connectionsConfigMapData" -}}
{{- $d := dict -}}
{{- range $name, $c := include "cp.cas" . | fromJson -}}
{{- if eq (include "cp.caSource" $c.ca) "inline" }}{{ $_ := set $d $c.inlineKey $c.ca.pem }}{{ end -}}
{{- end -}}
{{- toJson $d -}}
{{- end }}

{{/*
The chart's Secret and ConfigMap of connection settings, under `name`
(default <fullname>-connections), with `annotations` (hook copies), holding
only the Secret `keys` and ConfigMap `cas` given (default: all).
*/}}
{{- define "cp.connections" -}}
{{- $root := .root -}}
{{- $name := .name | default (include "cp.connectionsName" $root) -}}
{{- $ctx := dict "root" $root "component" (.component | default "connections") -}}
{{- $secret := include "cp.connectionsSecretData" $root | fromJson -}}
{{- if hasKey . "keys" -}}
{{- $all := $secret }}{{ $secret = dict -}}
{{- range .keys }}{{ if hasKey $all . }}{{ $_ := set $secret . (get $all .) }}{{ end }}{{ end -}}
{{- end -}}
{{- $cm := include "cp.connectionsConfigMapData" $root | fromJson -}}
{{- if hasKey . "cas" -}}
{{- $all := $cm }}{{ $cm = dict -}}
{{- range .cas }}{{ if hasKey $all . }}{{ $_ := set $cm . (get $all .) }}{{ end }}{{ end -}}
{{- end -}}
{{- if $secret }}
---
# Passwords of the connections, read by the pods as environment variables
# (secretKeyRef) and by KEDA's TriggerAuthentication. Only what the values
# carry; an existingSecret is referenced instead.
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "cp.labels" $ctx | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
type: Opaque
stringData:
  {{- range $k := keys $secret | sortAlpha }}
  {{ $k }}: {{ get $secret $k | quote }}
  {{- end }}
{{- end }}
{{- if $cm }}
---
# CA bundles given inline (`pem`): certificates, not secrets.
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "cp.labels" $ctx | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
data:
  {{- range $k := keys $cm | sortAlpha }}
  {{ $k }}: {{ get $cm $k | toJson }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
Password variables of a service container.
(dict "root" $ "prefix" "INGEST_" "registry" bool "secretName" <the chart
Secret's name, default <fullname>-connections>)
*/}}
{{- define "cp.connectionEnv" -}}
{{- $root := .root -}}
{{- $own := .secretName | default (include "cp.connectionsName" $root) -}}
{{- $k := $root.Values.kafka -}}
{{- if include "cp.kafkaSasl" $root }}
- name: {{ .prefix }}KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret | default $own }}
      key: {{ ternary $k.sasl.passwordKey "kafka-sasl-password" (ne $k.sasl.existingSecret "") }}
{{- end }}
{{- if and (include "cp.kafkaMutualTls" $root) $k.tls.clientCert.keyPasswordKey }}
- name: {{ .prefix }}KAFKA_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $k.tls.clientCert.existingSecret }}
      key: {{ $k.tls.clientCert.keyPasswordKey }}
{{- end }}
{{- $c := $root.Values.schemaRegistry.client -}}
{{- if and .registry (include "cp.registryClientAuth" $root) }}
- name: {{ .prefix }}REGISTRY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $c.existingSecret | default $own }}
      key: {{ ternary $c.passwordKey "registry-password" (ne $c.existingSecret "") }}
{{- end }}
{{- end }}

{{/*
Volumes and mounts of the connection files.
(dict "root" $ "kafka" bool "registry" bool "clickhouse" bool "registryUsers" bool
"configMapName" <the chart ConfigMap's name, default <fullname>-connections>)
*/}}
{{- define "cp.connectionVolumes" -}}
{{- $root := .root -}}
{{- $cm := .configMapName | default (include "cp.connectionsName" $root) -}}
{{- range include "cp.usedCas" . | fromJsonArray }}
{{- $src := include "cp.caSource" .ca }}
- name: {{ .volume }}
  {{- if eq $src "secret" }}
  secret:
    secretName: {{ .ca.existingSecret }}
    items:
      - key: {{ .ca.key }}
        path: ca.crt
  {{- else if eq $src "configMap" }}
  configMap:
    name: {{ .ca.existingConfigMap }}
    items:
      - key: {{ .ca.key }}
        path: ca.crt
  {{- else }}
  configMap:
    name: {{ $cm }}
    items:
      - key: {{ .inlineKey }}
        path: ca.crt
  {{- end }}
{{- end }}
{{- $cc := $root.Values.kafka.tls.clientCert }}
{{- if and .kafka (include "cp.kafkaMutualTls" $root) }}
- name: kafka-client-cert
  secret:
    secretName: {{ $cc.existingSecret }}
    items:
      - key: {{ $cc.certKey }}
        path: tls.crt
      - key: {{ $cc.keyKey }}
        path: tls.key
{{- end }}
{{- if and .registryUsers (include "cp.registryServerAuth" $root) }}
- name: registry-users
  secret:
    secretName: {{ include "cp.registryUsersSecretName" $root }}
    items:
      - key: {{ $root.Values.schemaRegistry.auth.secretKey }}
        path: {{ $root.Values.schemaRegistry.auth.secretKey }}
{{- end }}
{{- end }}

{{- define "cp.connectionMounts" -}}
{{- $root := .root -}}
{{- range include "cp.usedCas" . | fromJsonArray }}
- name: {{ .volume }}
  mountPath: {{ .dir }}
  readOnly: true
{{- end }}
{{- if and .kafka (include "cp.kafkaMutualTls" $root) }}
- name: kafka-client-cert
  mountPath: {{ include "cp.kafkaClientDir" $root }}
  readOnly: true
{{- end }}
{{- if and .registryUsers (include "cp.registryServerAuth" $root) }}
# A directory mount (not subPath): the registry reloads the users file
# when the Secret changes, without a restart.
- name: registry-users
  mountPath: {{ include "cp.registryUsersDir" $root }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
The [kafka] table of every service (INTERFACE: bootstrap, security_protocol,
sasl_mechanism, sasl_username, ssl_*_file, [kafka.properties]); the
passwords come from the environment.
*/}}
{{- define "cp.kafkaTable" -}}
{{- $k := .Values.kafka -}}
{{- $t := dict "bootstrap" (include "cp.kafkaBootstrap" .) "security_protocol" $k.securityProtocol -}}
{{- if include "cp.kafkaSasl" . -}}
{{- $_ := set $t "sasl_mechanism" $k.sasl.mechanism -}}
{{- $_ = set $t "sasl_username" $k.sasl.username -}}
{{- end -}}
{{- if include "cp.caSource" $k.tls.ca -}}
{{- $_ := set $t "ssl_ca_file" (printf "%s/ca.crt" (include "cp.kafkaCaDir" .)) -}}
{{- end -}}
{{- if include "cp.kafkaMutualTls" . -}}
{{- $_ := set $t "ssl_cert_file" (printf "%s/tls.crt" (include "cp.kafkaClientDir" .)) -}}
{{- $_ = set $t "ssl_key_file" (printf "%s/tls.key" (include "cp.kafkaClientDir" .)) -}}
{{- end -}}
{{- if $k.properties -}}
{{- $_ := set $t "properties" (deepCopy $k.properties) -}}
{{- end -}}
{{- toJson $t -}}
{{- end }}

{{/* registry_username and registry_ca_file of a registry client, laid over its table $c. */}}
{{- define "cp.setRegistryClient" -}}
{{- $root := .root -}}
{{- $c := .table -}}
{{- $rc := $root.Values.schemaRegistry.client -}}
{{- $_ := unset $c "registry_password" -}}
{{- if include "cp.registryClientAuth" $root -}}
{{- $_ = set $c "registry_username" $rc.username -}}
{{- else -}}
{{- $_ = unset $c "registry_username" -}}
{{- end -}}
{{- if include "cp.caSource" $rc.ca -}}
{{- $_ = set $c "registry_ca_file" (printf "%s/ca.crt" (include "cp.registryCaDir" $root)) -}}
{{- else -}}
{{- $_ = unset $c "registry_ca_file" -}}
{{- end -}}
{{- end }}

{{/*
checksum/secrets of a workload: over the chart-made secrets and inline CAs
it uses, and credentialsRevision (bumped by the operator after rotating an
existingSecret). The registry's users file and the API keys are not in it:
the services reload them.
(dict "root" $ "registry" bool "clickhouse" bool)
*/}}
{{- define "cp.secretsChecksum" -}}
{{- $root := .root -}}
{{- $s := include "cp.connectionsSecretData" $root | fromJson -}}
{{- $cm := include "cp.connectionsConfigMapData" $root | fromJson -}}
{{- $used := dict "revision" ($root.Values.credentialsRevision | toString) -}}
{{- $_ := set $used "kafka" (pick $s "kafka-sasl-username" "kafka-sasl-password") -}}
{{- $_ = set $used "kafkaCa" (pick $cm "kafka-ca.crt") -}}
{{- if .registry -}}
{{- $_ = set $used "registry" (pick $s "registry-password") -}}
{{- $_ = set $used "registryCa" (pick $cm "registry-ca.crt") -}}
{{- end -}}
{{- if .clickhouse -}}
{{- $ch := $root.Values.sinkClickhouse.clickhouse -}}
{{- if not $ch.existingSecret }}{{ $_ = set $used "clickhouse" (dict "user" $ch.user "password" $ch.password) }}{{ end -}}
{{- $_ = set $used "clickhouseCa" (pick $cm "clickhouse-ca.crt") -}}
{{- end -}}
{{- toJson $used | sha256sum -}}
{{- end }}

{{/* KEDA's names of the SASL mechanisms. */}}
{{- define "cp.kedaSasl" -}}
{{- get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512") .Values.kafka.sasl.mechanism -}}
{{- end }}

{{/* Whether the chart's TriggerAuthentication has anything to carry. */}}
{{- define "cp.kedaAuthNeeded" -}}
{{- if or (include "cp.kafkaSasl" .) (include "cp.caSource" .Values.kafka.tls.ca) (include "cp.kafkaMutualTls" .) }}true{{ end -}}
{{- end }}

{{/* Whether any ScaledObject uses the chart's TriggerAuthentication. */}}
{{- define "cp.kedaAuthUsed" -}}
{{- $used := false -}}
{{- range $v := list .Values.streamRouter .Values.sinkClickhouse .Values.enrichActivity -}}
{{- if and $v.enabled $v.keda.enabled (not $v.keda.authenticationRef) }}{{ $used = true }}{{ end -}}
{{- end -}}
{{- if and $used (include "cp.kedaAuthNeeded" .) }}true{{ end -}}
{{- end }}

{{/*
Checks across values that the schema cannot say clearly. Each failure names
the values to change.
*/}}
{{/*
The librdkafka properties the services set themselves, or that have their
own key; the services refuse them in [kafka.properties] (runtime/src/kafka.rs,
OWNED; a test keeps the two lists equal).
*/}}
{{- define "cp.kafkaOwnedProperties" -}}
acks enable.idempotence isolation.level transactional.id transaction.timeout.ms enable.auto.commit enable.auto.offset.store group.id auto.offset.reset enable.partition.eof max.in.flight.requests.per.connection message.timeout.ms partitioner bootstrap.servers metadata.broker.list security.protocol sasl.mechanism sasl.mechanisms sasl.username sasl.password ssl.ca.location ssl.certificate.location ssl.key.location ssl.key.password
{{- end }}

{{- define "cp.validateConnections" -}}
{{- $k := .Values.kafka -}}
{{- $p := $k.securityProtocol -}}
{{- $owned := include "cp.kafkaOwnedProperties" . | splitList " " -}}
{{- range $name, $_ := $k.properties -}}
{{- if has $name $owned -}}
{{- fail (printf "kafka.properties.%s is refused: the services set it themselves or take it from its own value (kafka.bootstrapServers, kafka.securityProtocol, kafka.sasl.*, kafka.tls.*); docs/configuration.md" $name) -}}
{{- end -}}
{{- end -}}
{{- if include "cp.kafkaSasl" . -}}
{{- if not (has $k.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" $p) -}}
{{- end -}}
{{- if not $k.sasl.username -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.username" $p) -}}
{{- end -}}
{{- if and (not $k.sasl.existingSecret) (not $k.sasl.password) -}}
{{- fail (printf "kafka.securityProtocol=%s needs a password: kafka.sasl.existingSecret (with kafka.sasl.passwordKey) or kafka.sasl.password" $p) -}}
{{- end -}}
{{- else if or $k.sasl.mechanism $k.sasl.username $k.sasl.password $k.sasl.existingSecret -}}
{{- fail (printf "kafka.sasl.* is set but kafka.securityProtocol is %s: set it to sasl_ssl (or sasl_plaintext), or clear kafka.sasl" $p) -}}
{{- end -}}
{{- if not (include "cp.kafkaTls" .) -}}
{{- if or (include "cp.caSource" $k.tls.ca) $k.tls.clientCert.existingSecret -}}
{{- fail (printf "kafka.tls.* is set but kafka.securityProtocol is %s: TLS needs ssl or sasl_ssl" $p) -}}
{{- end -}}
{{- end -}}
{{- range $name, $c := include "cp.cas" . | fromJson -}}
{{- $n := 0 -}}
{{- if $c.ca.existingSecret }}{{ $n = add1 $n }}{{ end -}}
{{- if $c.ca.existingConfigMap }}{{ $n = add1 $n }}{{ end -}}
{{- if $c.ca.pem }}{{ $n = add1 $n }}{{ end -}}
{{- if gt $n 1 -}}
{{- fail (printf "%s: set one of existingSecret, existingConfigMap and pem" $c.what) -}}
{{- end -}}
{{- if and $c.ca.pem (not (contains "-----BEGIN CERTIFICATE-----" $c.ca.pem)) -}}
{{- fail (printf "%s.pem must hold PEM certificates (-----BEGIN CERTIFICATE-----)" $c.what) -}}
{{- end -}}
{{- end -}}
{{- $rc := .Values.schemaRegistry.client -}}
{{- if and $rc.username (not $rc.existingSecret) (not $rc.password) -}}
{{- fail "schemaRegistry.client.username needs a password: schemaRegistry.client.existingSecret or schemaRegistry.client.password" -}}
{{- end -}}
{{- if and (not $rc.username) (or $rc.password $rc.existingSecret) -}}
{{- fail "schemaRegistry.client: a password without schemaRegistry.client.username" -}}
{{- end -}}
{{- if and (include "cp.caSource" $rc.ca) (hasPrefix "http://" (include "cp.registryUrl" .)) -}}
{{- fail (printf "schemaRegistry.client.ca is set but the registry URL is %s: a CA needs an https:// registry (schemaRegistry.externalUrl)" (include "cp.registryUrl" .)) -}}
{{- end -}}
{{- $r := .Values.schemaRegistry.register -}}
{{- if and $r.username (not $r.existingSecret) (not $r.password) -}}
{{- fail "schemaRegistry.register.username needs a password: schemaRegistry.register.existingSecret or schemaRegistry.register.password" -}}
{{- end -}}
{{- if and (not $r.username) (or $r.password $r.existingSecret) -}}
{{- fail "schemaRegistry.register: a password without schemaRegistry.register.username" -}}
{{- end -}}
{{- $a := .Values.schemaRegistry.auth -}}
{{- if $a.enabled -}}
{{- if not .Values.schemaRegistry.enabled -}}
{{- fail "schemaRegistry.auth configures this release's registry, but schemaRegistry.enabled=false: give the external registry's credentials in schemaRegistry.client" -}}
{{- end -}}
{{- if and (not $a.existingSecret) (not $a.users) -}}
{{- fail "schemaRegistry.auth.enabled needs users: schemaRegistry.auth.existingSecret (a users file) or schemaRegistry.auth.users" -}}
{{- end -}}
{{- if not $rc.username -}}
{{- fail "schemaRegistry.auth.enabled: the services need credentials of a user with role write (schemaRegistry.client.username and a password)" -}}
{{- end -}}
{{- if not $a.existingSecret -}}
{{- $roles := dict -}}
{{- range $i, $u := $a.users -}}
{{- if hasKey $roles $u.name }}{{ fail (printf "schemaRegistry.auth.users: %s is listed twice" $u.name) }}{{ end -}}
{{- $_ := set $roles $u.name $u.role -}}
{{- end -}}
{{- $clientRole := get $roles $rc.username -}}
{{- if not (has $clientRole (list "write" "admin")) -}}
{{- fail (printf "schemaRegistry.client.username %s must be one of schemaRegistry.auth.users with role write or admin (the services register their schemas)" $rc.username) -}}
{{- end -}}
{{- if and $r.enabled $r.compatibility -}}
{{- $user := $r.username | default $rc.username -}}
{{- if ne (get $roles $user) "admin" -}}
{{- fail (printf "schemaRegistry.register.compatibility sets each subject's level, which needs role admin: %s is not an admin of schemaRegistry.auth.users (set schemaRegistry.register.username)" $user) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $ch := .Values.sinkClickhouse.clickhouse -}}
{{- if and (include "cp.caSource" $ch.ca) (not (hasPrefix "https://" $ch.url)) -}}
{{- fail (printf "sinkClickhouse.clickhouse.ca is set but sinkClickhouse.clickhouse.url is %s: a CA needs an https:// URL" $ch.url) -}}
{{- end -}}
{{- end }}
