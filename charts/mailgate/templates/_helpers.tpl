{{/*
Names and labels shared by every template. Components ("gateway",
"operator") are passed as (dict "ctx" $ "component" "gateway").
*/}}

{{/* The chart name, overridable for forks. */}}
{{- define "mailgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name. A release already called "mailgate..." is not
prefixed twice. Kept to 45 characters so suffixes such as "-operator-watch"
still fit the 63-character limit on names and label values.
*/}}
{{- define "mailgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "mailgate.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Name for cluster-scoped objects (ClusterRole, ClusterRoleBinding):
prefixed by the release namespace, because releases of
the same name in two namespaces would otherwise overwrite each other's.
*/}}
{{- define "mailgate.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "mailgate.fullname" .) | trunc 53 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods; never change them after a release exists. */}}
{{- define "mailgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailgate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* The standard app.kubernetes.io labels on every object. */}}
{{- define "mailgate.labels" -}}
helm.sh/chart: {{ include "mailgate.chart" .ctx }}
{{ include "mailgate.selectorLabels" . }}
app.kubernetes.io/version: {{ include "mailgate.imageTag" .ctx | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: mailgate
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end -}}

{{/*
The gateway pods as a label selector string, for the operator's
--gateway-selector (it discovers gateway pods with it).
*/}}
{{- define "mailgate.gatewaySelector" -}}
{{- $labels := include "mailgate.selectorLabels" (dict "ctx" . "component" "gateway") | fromYaml -}}
{{- $pairs := list -}}
{{- range $key := keys $labels | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $labels $key)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* The image tag: explicit value, else the chart's appVersion. */}}
{{- define "mailgate.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{/* registry/repository:tag, or @digest when a digest is given (it wins over the tag). */}}
{{- define "mailgate.image" -}}
{{- $repo := .Values.image.repository -}}
{{- with .Values.image.registry -}}
{{- $repo = printf "%s/%s" . $repo -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (include "mailgate.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{- define "mailgate.gateway.fullname" -}}
{{- printf "%s-gateway" (include "mailgate.fullname" .) -}}
{{- end -}}

{{- define "mailgate.operator.fullname" -}}
{{- printf "%s-operator" (include "mailgate.fullname" .) -}}
{{- end -}}

{{- define "mailgate.gateway.serviceAccountName" -}}
{{- include "mailgate.gateway.fullname" . -}}
{{- end -}}

{{- define "mailgate.operator.serviceAccountName" -}}
{{- include "mailgate.operator.fullname" . -}}
{{- end -}}

{{/* The Secret holding the admin API bearer token (key "token"). */}}
{{- define "mailgate.adminTokenSecretName" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin-token" (include "mailgate.fullname" .)) -}}
{{- end -}}

{{/* Where both processes read the admin token; the Secret is mounted there. */}}
{{- define "mailgate.adminTokenDir" -}}
/var/run/mailgate/admin
{{- end -}}

{{/* The Lease the operator replicas compete for; its holder is the active one. */}}
{{- define "mailgate.leaseName" -}}
{{- include "mailgate.operator.fullname" . -}}
{{- end -}}

{{/* Volume and mount for the admin token, identical in both Deployments. */}}
{{/* Where the SMTP ingress's TLS Secret is mounted in the gateway container. */}}
{{- define "mailgate.smtpTlsDir" -}}
/etc/mailgate/smtp-tls
{{- end -}}

{{/* Where the SQLite queue's volume is mounted in the gateway container; the file is queue.db in it. */}}
{{- define "mailgate.queueDir" -}}
/var/lib/mailgate
{{- end -}}

{{/* The PersistentVolumeClaim holding the SQLite queue: the existing one, else the chart's. */}}
{{- define "mailgate.queueClaimName" -}}
{{- .Values.gateway.queue.sqlite.existingClaim | default (printf "%s-queue" (include "mailgate.gateway.fullname" .)) -}}
{{- end -}}

{{- define "mailgate.adminTokenVolume" -}}
- name: admin-token
  secret:
    secretName: {{ include "mailgate.adminTokenSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.adminToken.secretKey }}
        path: token
{{- end -}}

{{- define "mailgate.adminTokenMount" -}}
- name: admin-token
  mountPath: {{ include "mailgate.adminTokenDir" . }}
  readOnly: true
{{- end -}}

{{/*
Checks that a JSON schema cannot express (it sees one value at a time).
Rendered by templates/validate.yaml; each failure names the values to fix.
*/}}
{{- define "mailgate.validate" -}}
{{- $as := .Values.gateway.autoscaling -}}
{{- if and $as.enabled (gt (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- fail (printf "gateway.autoscaling.minReplicas (%d) must not exceed gateway.autoscaling.maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- end -}}
{{- if eq (int .Values.gateway.port) (int .Values.gateway.adminPort) -}}
{{- fail (printf "gateway.port and gateway.adminPort must differ (both are %d): the admin API needs its own port so the NetworkPolicy can restrict it to the operator" (int .Values.gateway.port)) -}}
{{- end -}}
{{- if eq (int .Values.operator.healthPort) (int .Values.operator.metricsPort) -}}
{{- fail (printf "operator.healthPort and operator.metricsPort must differ (both are %d)" (int .Values.operator.healthPort)) -}}
{{- end -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) -}}
{{- fail (printf "operator.replicas is %d but operator.leaderElection.enabled is false: the replicas would all act at once; enable leader election or run one replica" (int .Values.operator.replicas)) -}}
{{- end -}}
{{- $smtp := .Values.gateway.smtp -}}
{{- if $smtp.enabled -}}
{{- if has (int $smtp.port) (list (int .Values.gateway.port) (int .Values.gateway.adminPort) (int $smtp.implicitTlsPort)) -}}
{{- fail (printf "gateway.smtp.port (%d) must differ from gateway.port, gateway.adminPort and gateway.smtp.implicitTlsPort" (int $smtp.port)) -}}
{{- end -}}
{{- if and $smtp.implicitTlsPort (has (int $smtp.implicitTlsPort) (list (int .Values.gateway.port) (int .Values.gateway.adminPort))) -}}
{{- fail (printf "gateway.smtp.implicitTlsPort (%d) must differ from gateway.port and gateway.adminPort" (int $smtp.implicitTlsPort)) -}}
{{- end -}}
{{- if and $smtp.implicitTlsPort (not $smtp.tls.secretName) -}}
{{- fail "gateway.smtp.implicitTlsPort needs gateway.smtp.tls.secretName (a kubernetes.io/tls Secret): implicit TLS without a certificate cannot work" -}}
{{- end -}}
{{- if and $smtp.implicitTlsPort (eq (int $smtp.service.port) (int $smtp.service.implicitTlsPort)) -}}
{{- fail (printf "gateway.smtp.service.port and gateway.smtp.service.implicitTlsPort must differ (both are %d)" (int $smtp.service.port)) -}}
{{- end -}}
{{- if eq (int $smtp.service.port) (int .Values.gateway.service.port) -}}
{{- fail (printf "gateway.smtp.service.port must differ from gateway.service.port (both are %d)" (int $smtp.service.port)) -}}
{{- end -}}
{{- end -}}
{{- $queue := .Values.gateway.queue -}}
{{- if eq $queue.type "sqlite" -}}
{{- if .Values.gateway.autoscaling.enabled -}}
{{- fail "gateway.queue.type sqlite allows one gateway replica (SQLite has one writer and its ReadWriteOnce volume mounts on one node), but gateway.autoscaling.enabled is true: disable autoscaling, or use gateway.queue.type postgresql to share the queue between replicas" -}}
{{- end -}}
{{- if gt (int .Values.gateway.replicas) 1 -}}
{{- fail (printf "gateway.queue.type sqlite allows one gateway replica (SQLite has one writer and its ReadWriteOnce volume mounts on one node), but gateway.replicas is %d: set gateway.replicas to 1, or use gateway.queue.type postgresql to share the queue between replicas" (int .Values.gateway.replicas)) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $queue.type "postgresql") (not $queue.postgresql.existingSecret) -}}
{{- fail "gateway.queue.type postgresql needs gateway.queue.postgresql.existingSecret: the name of a Secret holding the DSN under gateway.queue.postgresql.secretKey (CloudNativePG: the <cluster>-app Secret, with secretKey uri)" -}}
{{- end -}}
{{- if and (ne $queue.type "none") (gt (int $queue.retryDelaySeconds) (int $queue.maxRetryDelaySeconds)) -}}
{{- fail (printf "gateway.queue.retryDelaySeconds (%d) must not exceed gateway.queue.maxRetryDelaySeconds (%d)" (int $queue.retryDelaySeconds) (int $queue.maxRetryDelaySeconds)) -}}
{{- end -}}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) -}}
{{- fail (printf "watchNamespaces lists a namespace twice: %v" .Values.watchNamespaces) -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rules wherever it serves SmtpAccounts, as a Role per watched
namespace or one ClusterRole. kopf patches the object itself for finalizers
and its annotations, and the status subresource for status; it never updates.
*/}}
{{- define "mailgate.operator.servingRules" -}}
- apiGroups: ["mailgate.dev"]
  resources: ["smtpaccounts"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["mailgate.dev"]
  resources: ["smtpaccounts/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
