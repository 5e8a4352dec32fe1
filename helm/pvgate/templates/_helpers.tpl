{{/*
Names, labels, images and the TOML settings files.  Component templates call these with
(dict "root" $ "component" "gateway") where a component is involved.
*/}}

{{- define "pvgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The release's full name: <release>-pvgate, or the release name when it says pvgate. */}}
{{- define "pvgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* <fullname>-<component>, within the 63 characters of a DNS label. */}}
{{- define "pvgate.componentName" -}}
{{- printf "%s-%s" (include "pvgate.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "pvgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* Labels of every object (app.kubernetes.io/*). */}}
{{- define "pvgate.labels" -}}
helm.sh/chart: {{ include "pvgate.chart" . }}
app.kubernetes.io/name: {{ include "pvgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pvgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's objects: (dict "root" $ "component" "gateway"). */}}
{{- define "pvgate.componentLabels" -}}
{{ include "pvgate.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* What a component's Services, PDBs and spread constraints select. */}}
{{- define "pvgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pvgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "pvgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pvgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/* An image reference: (dict "root" $ "image" .Values.gateway.image); blanks fall back to
.Values.image, the tag to the chart's appVersion, and a digest wins over a tag. */}}
{{- define "pvgate.image" -}}
{{- $global := .root.Values.image -}}
{{- $repository := default $global.repository .image.repository -}}
{{- $digest := default $global.digest .image.digest -}}
{{- if $digest -}}
{{- printf "%s@%s" $repository $digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default (default .root.Chart.AppVersion $global.tag) .image.tag) -}}
{{- end -}}
{{- end }}

{{/* The Secret the processes read their PVGATE_* secrets from. */}}
{{- define "pvgate.secretName" -}}
{{- default (include "pvgate.fullname" .) .Values.secrets.existingSecret -}}
{{- end }}

{{- define "pvgate.redisTlsSecretName" -}}
{{- default (include "pvgate.componentName" (dict "root" . "component" "redis-tls")) .Values.redis.tls.existingSecret -}}
{{- end }}

{{- define "pvgate.redisTlsDir" -}}/etc/pvgate/redis-tls{{- end }}
{{- define "pvgate.configDir" -}}/etc/pvgate/config{{- end }}

{{/* The Redis part of both TOML files, as JSON: where Redis is, from .Values.redis. */}}
{{- define "pvgate.redisSettings" -}}
{{- $r := .Values.redis -}}
{{- $s := dict -}}
{{- if .Values.devRedis.enabled -}}
{{- $_ := set $s "url" (printf "redis://%s:6379/0" (include "pvgate.componentName" (dict "root" . "component" "dev-redis"))) -}}
{{- else if eq $r.mode "standalone" -}}
{{- $_ := set $s "url" $r.url -}}
{{- else if eq $r.mode "cluster" -}}
{{- $_ := set $s "cluster_nodes" $r.clusterNodes -}}
{{- else if eq $r.mode "sentinel" -}}
{{- $_ := set $s "sentinels" $r.sentinels -}}
{{- $_ := set $s "sentinel_master" $r.sentinelMaster -}}
{{- end -}}
{{- with $r.username }}{{ $_ := set $s "username" . }}{{ end -}}
{{- if $r.tls.enabled -}}
{{- $dir := include "pvgate.redisTlsDir" . -}}
{{- $_ := set $s "tls" true -}}
{{- if $r.tls.caKey }}{{ $_ := set $s "tls_ca_file" (printf "%s/%s" $dir $r.tls.caKey) }}{{ end -}}
{{- if $r.tls.certKey }}{{ $_ := set $s "tls_cert_file" (printf "%s/%s" $dir $r.tls.certKey) }}{{ end -}}
{{- if $r.tls.keyKey }}{{ $_ := set $s "tls_key_file" (printf "%s/%s" $dir $r.tls.keyKey) }}{{ end -}}
{{- end -}}
{{- toJson $s -}}
{{- end }}

{{/* gateway.toml: gateway.config, the listen addresses, workers and Redis. */}}
{{- define "pvgate.gatewayToml" -}}
{{- $g := .Values.gateway -}}
{{- $c := deepCopy (default dict $g.config) -}}
{{- $_ := set $c "listen" (printf "%s:%d" .Values.bindAddress (int $g.containerPorts.http)) -}}
{{- $_ := set $c "metrics_listen" (printf "%s:%d" .Values.bindAddress (int $g.containerPorts.metrics)) -}}
{{- $_ := set $c "workers" (int $g.workers) -}}
{{- $_ := set $c "redis" (mergeOverwrite (default dict $c.redis) (include "pvgate.redisSettings" . | fromJson)) -}}
# pvgate gateway settings, rendered by the chart from gateway.config (examples/gateway.toml
# documents every key).  Secrets come from PVGATE_* environment variables.
{{ include "pvgate.toml" $c }}
{{- end }}

{{/* billing.toml: billing.config, the listen addresses and Redis; database_url is a secret. */}}
{{- define "pvgate.billingToml" -}}
{{- $b := .Values.billing -}}
{{- $c := deepCopy (default dict $b.config) -}}
{{- $_ := set $c "listen" (printf "%s:%d" .Values.bindAddress (int $b.containerPorts.admin)) -}}
{{- $_ := set $c "metrics_listen" (printf "%s:%d" .Values.bindAddress (int $b.containerPorts.metrics)) -}}
{{- $_ := set $c "redis" (mergeOverwrite (default dict $c.redis) (include "pvgate.redisSettings" . | fromJson)) -}}
# pvgate billing settings, rendered by the chart from billing.config (billing/settings.py).
# database_url and the other secrets come from PVGATE_* environment variables.
{{ include "pvgate.toml" $c }}
{{- end }}

{{/*
A map as TOML: plain keys first, then [tables] (one level: pvgate's sections), then
[[arrays of tables]] (e.g. [[site]]).  Keys whose value is null are left out, so pvgate's
default applies.
*/}}
{{- define "pvgate.toml" -}}
{{- $m := . -}}
{{- range $k, $v := $m }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (include "pvgate.toml.isTableArray" $v)) }}
{{ include "pvgate.toml.key" $k }} = {{ include "pvgate.toml.value" (dict "key" $k "value" $v) }}
{{- end }}
{{- end }}
{{- range $k, $v := $m }}
{{- if kindIs "map" $v }}

[{{ include "pvgate.toml.key" $k }}]
{{- range $k2, $v2 := $v }}
{{- if not (kindIs "invalid" $v2) }}
{{ include "pvgate.toml.key" $k2 }} = {{ include "pvgate.toml.value" (dict "key" (printf "%s.%s" $k $k2) "value" $v2) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k, $v := $m }}
{{- if include "pvgate.toml.isTableArray" $v }}
{{- range $item := $v }}

[[{{ include "pvgate.toml.key" $k }}]]
{{- range $k2, $v2 := $item }}
{{- if not (kindIs "invalid" $v2) }}
{{ include "pvgate.toml.key" $k2 }} = {{ include "pvgate.toml.value" (dict "key" (printf "%s.%s" $k $k2) "value" $v2) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pvgate.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) (kindIs "map" (first .)) }}true{{ end -}}
{{- end }}

{{- define "pvgate.toml.key" -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" .) }}{{ fail (printf "pvgate: setting %q: not a TOML bare key" .) }}{{ end -}}
{{- . -}}
{{- end }}

{{/* A scalar or an array of scalars; strings as JSON strings (valid TOML basic strings). */}}
{{- define "pvgate.toml.value" -}}
{{- $v := .value -}}
{{- if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "pvgate.toml.value" (dict "key" $.key "value" $e) }}{{ end }}]
{{- else if kindIs "map" $v -}}
{{- fail (printf "pvgate: setting %s: a table nested this deep is no pvgate setting" .key) -}}
{{- else if kindIs "invalid" $v -}}
{{- fail (printf "pvgate: setting %s: null inside a list" .key) -}}
{{- else -}}
{{- toJson $v -}}
{{- end -}}
{{- end }}

{{/* The gateway's shutdown grace (limits.shutdown_grace_s), in seconds. */}}
{{- define "pvgate.gatewayShutdownGrace" -}}
{{- $limits := default dict .Values.gateway.config.limits -}}
{{- $grace := 10.0 -}}
{{- if not (kindIs "invalid" $limits.shutdown_grace_s) }}{{ $grace = $limits.shutdown_grace_s }}{{ end -}}
{{- ceil $grace | int -}}
{{- end }}

{{- define "pvgate.gatewayTerminationGrace" -}}
{{- $g := .Values.gateway -}}
{{- $needed := add (int $g.preStopSleepSeconds) (include "pvgate.gatewayShutdownGrace" . | int) -}}
{{- if kindIs "invalid" $g.terminationGracePeriodSeconds -}}
{{- add $needed 10 -}}
{{- else if le (int $g.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "pvgate: gateway.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + limits.shutdown_grace_s (%d)" (int $g.terminationGracePeriodSeconds) $needed) -}}
{{- else -}}
{{- int $g.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end }}

{{/* Whether the Prometheus Operator's objects are rendered. */}}
{{- define "pvgate.monitoringAPI" -}}
{{- if or (not .Values.monitoring.requireAPI) (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{ end -}}
{{- end }}

{{/* Whether the chart makes the Secret of PVGATE_* variables. */}}
{{- define "pvgate.ownSecret" -}}
{{- $s := .Values.secrets -}}
{{- if and (not $s.existingSecret) (or $s.databaseUrl $s.redisUrl $s.redisPassword $s.redisSentinelPassword $s.billingEnv) }}true{{ end -}}
{{- end }}

{{/*
One secret environment variable: (dict "root" $ "name" "PVGATE_REDIS_URL" "key" "redisUrl"
"optional" true).  From the existing Secret: always (optional ones may be missing there);
from the chart's Secret: only when the value is set.
*/}}
{{- define "pvgate.secretEnv" -}}
{{- $s := .root.Values.secrets -}}
{{- if or $s.existingSecret (get $s .key) }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "pvgate.secretName" .root }}
      key: {{ get $s.keys .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{/* Redis secrets, for every pvgate container that talks to Redis. */}}
{{- define "pvgate.redisEnv" -}}
{{- include "pvgate.secretEnv" (dict "root" . "name" "PVGATE_REDIS_URL" "key" "redisUrl" "optional" true) }}
{{- include "pvgate.secretEnv" (dict "root" . "name" "PVGATE_REDIS_PASSWORD" "key" "redisPassword" "optional" true) }}
{{- if eq .Values.redis.mode "sentinel" }}
{{- include "pvgate.secretEnv" (dict "root" . "name" "PVGATE_REDIS_SENTINEL_PASSWORD" "key" "redisSentinelPassword" "optional" true) }}
{{- end }}
{{- end }}

{{/* The ledger's URL from the release's Secret (or the existing one). */}}
{{- define "pvgate.databaseEnv" -}}
- name: PVGATE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pvgate.secretName" . }}
      key: {{ .Values.secrets.keys.databaseUrl }}
{{- end }}

{{/* The settings volume: (dict "root" $ "file" "gateway.toml"). */}}
{{- define "pvgate.configVolume" -}}
- name: config
  configMap:
    name: {{ include "pvgate.componentName" (dict "root" .root "component" "config") }}
    items:
      - key: {{ .file }}
        path: {{ .file }}
{{- end }}

{{- define "pvgate.redisTlsVolume" -}}
{{- if .Values.redis.tls.enabled }}
- name: redis-tls
  secret:
    secretName: {{ include "pvgate.redisTlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "pvgate.redisTlsMount" -}}
{{- if .Values.redis.tls.enabled }}
- name: redis-tls
  mountPath: {{ include "pvgate.redisTlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The /tmp emptyDir: (dict "medium" … "sizeLimit" …). */}}
{{- define "pvgate.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{/* Spread constraints with the component's pods as the default labelSelector. */}}
{{- define "pvgate.topologySpread" -}}
{{- $selector := include "pvgate.selectorLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not $c.labelSelector }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* Checks of values the schema cannot express. */}}
{{- define "pvgate.validate" -}}
{{- $v := .Values -}}
{{- $needsDatabase := or $v.billing.enabled $v.migrations.enabled -}}
{{- if and $needsDatabase (not $v.secrets.existingSecret) (not $v.secrets.databaseUrl) -}}
{{- fail "pvgate: billing and migrations need the ledger's URL: set secrets.databaseUrl, or secrets.existingSecret with the key secrets.keys.databaseUrl (or disable billing and migrations)" -}}
{{- end -}}
{{- if and (eq $v.redis.mode "standalone") (contains "@" $v.redis.url) -}}
{{- fail "pvgate: redis.url must not hold credentials (it goes into a ConfigMap): put the password in secrets.redisPassword, or the whole URL in secrets.redisUrl" -}}
{{- end -}}
{{- if and (eq $v.redis.mode "cluster") (not $v.redis.clusterNodes) -}}
{{- fail "pvgate: redis.mode cluster needs redis.clusterNodes" -}}
{{- end -}}
{{- if and (eq $v.redis.mode "sentinel") (not $v.redis.sentinels) -}}
{{- fail "pvgate: redis.mode sentinel needs redis.sentinels" -}}
{{- end -}}
{{- if and $v.devRedis.enabled (ne $v.redis.mode "standalone") -}}
{{- fail "pvgate: devRedis needs redis.mode standalone" -}}
{{- end -}}
{{- $tls := $v.redis.tls -}}
{{- if and $tls.enabled (not $tls.existingSecret) (not $v.secrets.redisTls.ca) -}}
{{- fail "pvgate: redis.tls needs redis.tls.existingSecret or secrets.redisTls.ca" -}}
{{- end -}}
{{- if and $tls.enabled (ne (empty $tls.certKey) (empty $tls.keyKey)) -}}
{{- fail "pvgate: redis.tls.certKey and redis.tls.keyKey go together (a client certificate and its key), or neither" -}}
{{- end -}}
{{- if and $tls.enabled (eq $v.redis.mode "standalone") (not $v.devRedis.enabled) (not (hasPrefix "rediss://" $v.redis.url)) (not $v.secrets.redisUrl) (not $v.secrets.existingSecret) -}}
{{- fail "pvgate: redis.tls with one node needs a rediss:// redis.url" -}}
{{- end -}}
{{- if and $v.billing.ingress.enabled (not $v.billing.enabled) -}}
{{- fail "pvgate: billing.ingress needs billing.enabled" -}}
{{- end -}}
{{- end }}
