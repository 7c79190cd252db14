{{/* Chart name, truncated to a DNS label. */}}
{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart's. */}}
{{- define "tandem.fullname" -}}
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

{{- define "tandem.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tandem.labels" -}}
helm.sh/chart: {{ include "tandem.chart" . }}
{{ include "tandem.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tandem
{{- end }}

{{/* A role's objects: (dict "root" $ "component" "retrieval"). */}}
{{- define "tandem.componentName" -}}
{{- printf "%s-%s" (include "tandem.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tandem.componentSelectorLabels" -}}
{{ include "tandem.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tandem.componentLabels" -}}
{{ include "tandem.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tandem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tandem.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The server image: (dict "root" $ "gpu" bool). */}}
{{- define "tandem.image" -}}
{{- $img := .root.Values.image }}
{{- $tag := default .root.Chart.AppVersion $img.tag }}
{{- if .gpu }}
{{- $tag = default (printf "%s-gpu" $tag) $img.gpuTag }}
{{- end }}
{{- printf "%s:%s" $img.repository $tag }}
{{- end }}

{{- define "tandem.dataImage" -}}
{{- $img := .Values.data.image }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}

{{/* http, or https when the servers serve TLS. */}}
{{- define "tandem.scheme" -}}
{{- ternary "https" "http" .Values.tls.enabled }}
{{- end }}

{{/* One address per retrieval shard: its StatefulSet pod behind the headless Service. */}}
{{- define "tandem.retrievalAddr" -}}
{{- $sts := include "tandem.componentName" (dict "root" . "component" "retrieval") }}
{{- $addrs := list }}
{{- range $i := until (int .Values.retrieval.shards) }}
{{- $addrs = append $addrs (printf "%s://%s-%d.%s.%s.svc.%s:%d" (include "tandem.scheme" $) $sts $i $sts $.Release.Namespace $.Values.clusterDomain (int $.Values.ports.grpc)) }}
{{- end }}
{{- join "," $addrs }}
{{- end }}

{{- define "tandem.rankingAddr" -}}
{{- $svc := include "tandem.componentName" (dict "root" . "component" "ranking") }}
{{- printf "%s://%s.%s.svc.%s:%d" (include "tandem.scheme" .) $svc .Release.Namespace .Values.clusterDomain (int .Values.ports.grpc) }}
{{- end }}

{{/* Flags every server takes: listen, metrics, connection age, TLS. */}}
{{- define "tandem.commonArgs" -}}
{{- $v := .Values }}
{{- $args := list (printf "--listen=0.0.0.0:%d" (int $v.ports.grpc)) }}
{{- if $v.metrics.enabled }}
{{- $args = append $args (printf "--metrics-listen=0.0.0.0:%d" (int $v.ports.metrics)) }}
{{- end }}
{{- $args = append $args (printf "--max-connection-age-s=%d" (int $v.grpc.maxConnectionAgeSeconds)) }}
{{- if $v.tls.enabled }}
{{- $args = concat $args (list "--tls-cert=/etc/tandem/tls/tls.crt" "--tls-key=/etc/tandem/tls/tls.key") }}
{{- $args = append $args (printf "--health-listen=0.0.0.0:%d" (int $v.ports.health)) }}
{{- if $v.tls.clientAuth }}
{{- $args = append $args "--tls-client-ca=/etc/tandem/tls/ca.crt" }}
{{- end }}
{{- end }}
{{- toJson $args }}
{{- end }}

{{/* A role's probes: the chart-wide settings overridden by the role's `probes`. */}}
{{- define "tandem.probes" -}}
{{- $p := mergeOverwrite (deepCopy .root.Values.probes) (deepCopy .cfg.probes) }}
{{- /* TLS: the plaintext health-only port, since the kubelet's gRPC probes cannot do TLS. */}}
{{- $port := ternary .root.Values.ports.health .root.Values.ports.grpc .root.Values.tls.enabled }}
{{- $grpc := dict "grpc" (dict "port" (int $port)) -}}
startupProbe:
  {{- toYaml (merge (deepCopy $grpc) $p.startup) | nindent 2 }}
readinessProbe:
  {{- toYaml (merge (deepCopy $grpc) $p.readiness) | nindent 2 }}
livenessProbe:
  {{- toYaml (merge (deepCopy $grpc) $p.liveness) | nindent 2 }}
{{- end }}

{{/*
The pod template every role shares. Arguments (dict):
  root       $
  component  gateway | retrieval | ranking
  cfg        the role's values
  binary     the server in /opt/tandem/bin
  args       the role's own flags (list)
  env        the role's own env vars (list), before the shared ones: args may use $(VAR)
  gpu        the role's gpu values when it runs on a GPU, else nil
  state      volume source for /var/lib/tandem (dict), or nil when none or a claim template
*/}}
{{- define "tandem.podTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $cfg := .cfg }}
{{- $gpu := .gpu }}
{{- $scope := dict "root" $root "component" .component -}}
metadata:
  labels:
    {{- include "tandem.componentLabels" $scope | nindent 4 }}
    {{- with $cfg.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $cfg.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "tandem.serviceAccountName" $root }}
  # The servers never call the Kubernetes API.
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ int $v.shutdown.terminationGracePeriodSeconds }}
  {{- $nodeSelector := deepCopy $cfg.nodeSelector }}
  {{- $tolerations := $cfg.tolerations }}
  {{- if $gpu }}
  {{- $nodeSelector = mergeOverwrite (deepCopy $gpu.nodeSelector) $nodeSelector }}
  {{- $tolerations = concat $tolerations $gpu.tolerations }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- tpl (toYaml .) $root | nindent 4 }}
  {{- end }}
  {{- if eq $v.data.source "image" }}
  initContainers:
    # Copies the data image's catalog and models into the pod's /data volume.
    - name: data
      image: {{ include "tandem.dataImage" $root | quote }}
      imagePullPolicy: {{ $v.data.image.pullPolicy }}
      command: ["cp", "-R", {{ printf "%s/." (trimSuffix "/" $v.data.image.path) | quote }}, "/seed/"]
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      resources:
        {{- toYaml $v.data.resources | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /seed
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "tandem.image" (dict "root" $root "gpu" (not (empty $gpu))) | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: [{{ printf "/opt/tandem/bin/%s" .binary | quote }}]
      args:
        {{- range concat .args (include "tandem.commonArgs" $root | fromJsonArray) $cfg.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- $env := .env }}
      {{- if $v.adminToken.existingSecret }}
      {{- $env = append $env (dict "name" "TANDEM_ADMIN_TOKEN" "valueFrom" (dict "secretKeyRef" (dict "name" $v.adminToken.existingSecret "key" $v.adminToken.key))) }}
      {{- end }}
      {{- if $gpu }}
      {{- /* The read-only root has no $HOME/.nv for CUDA's kernel cache. */}}
      {{- $env = append $env (dict "name" "CUDA_CACHE_PATH" "value" "/tmp/cuda-cache") }}
      {{- end }}
      {{- with $v.otel.endpoint }}
      {{- $attrs := list "k8s.namespace.name=$(K8S_NAMESPACE)" "k8s.pod.name=$(K8S_POD_NAME)" "k8s.node.name=$(K8S_NODE_NAME)" }}
      {{- with $v.otel.resourceAttributes }}
      {{- $attrs = append $attrs . }}
      {{- end }}
      {{- $env = concat $env (list
          (dict "name" "K8S_NAMESPACE" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.namespace")))
          (dict "name" "K8S_POD_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name")))
          (dict "name" "K8S_NODE_NAME" "valueFrom" (dict "fieldRef" (dict "fieldPath" "spec.nodeName")))
          (dict "name" "OTEL_EXPORTER_OTLP_ENDPOINT" "value" .)
          (dict "name" "OTEL_EXPORTER_OTLP_PROTOCOL" "value" $v.otel.protocol)
          (dict "name" "OTEL_SERVICE_NAME" "value" (printf "tandem-%s" $.component))
          (dict "name" "OTEL_TRACES_SAMPLER" "value" $v.otel.tracesSampler)
          (dict "name" "OTEL_TRACES_SAMPLER_ARG" "value" (toString $v.otel.tracesSamplerArg))
          (dict "name" "OTEL_RESOURCE_ATTRIBUTES" "value" (join "," $attrs))) }}
      {{- if $v.otel.tls.existingSecret }}
      {{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_CERTIFICATE" "value" "/etc/tandem/otel-tls/ca.crt") }}
      {{- if $v.otel.tls.clientAuth }}
      {{- $env = concat $env (list
          (dict "name" "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" "value" "/etc/tandem/otel-tls/tls.crt")
          (dict "name" "OTEL_EXPORTER_OTLP_CLIENT_KEY" "value" "/etc/tandem/otel-tls/tls.key")) }}
      {{- end }}
      {{- end }}
      {{- end }}
      {{- $env = concat $env $cfg.extraEnv }}
      {{- with $env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: grpc
          containerPort: {{ int $v.ports.grpc }}
          protocol: TCP
        {{- if $v.metrics.enabled }}
        - name: metrics
          containerPort: {{ int $v.ports.metrics }}
          protocol: TCP
        {{- end }}
        {{- if $v.tls.enabled }}
        - name: health
          containerPort: {{ int $v.ports.health }}
          protocol: TCP
        {{- end }}
      {{- include "tandem.probes" (dict "root" $root "cfg" $cfg) | nindent 6 }}
      {{- if $v.shutdown.preStopSleepSeconds }}
      lifecycle:
        # Endpoints and clients drop the pod before SIGTERM starts the drain.
        preStop:
          sleep:
            seconds: {{ int $v.shutdown.preStopSleepSeconds }}
      {{- end }}
      {{- $resources := deepCopy $cfg.resources }}
      {{- if $gpu }}
      {{- $limits := default (dict) (get $resources "limits") }}
      {{- $_ := set $limits $gpu.resourceName (int $gpu.count) }}
      {{- $_ = set $resources "limits" $limits }}
      {{- end }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /data
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if ne .component "ranking" }}
        - name: state
          mountPath: /var/lib/tandem
        {{- end }}
        {{- if $v.tls.enabled }}
        - name: tls
          mountPath: /etc/tandem/tls
          readOnly: true
        {{- end }}
        {{- if and $v.otel.endpoint $v.otel.tls.existingSecret }}
        - name: otel-tls
          mountPath: /etc/tandem/otel-tls
          readOnly: true
        {{- end }}
  volumes:
    - name: data
      {{- if eq $v.data.source "existingClaim" }}
      persistentVolumeClaim:
        claimName: {{ $v.data.existingClaim }}
        readOnly: true
      {{- else }}
      emptyDir:
        sizeLimit: {{ $v.data.sizeLimit }}
      {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
    {{- with .state }}
    - name: state
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if $v.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ $v.tls.existingSecret }}
        # Group-readable for fsGroup 10001 only: the key is not world-readable.
        defaultMode: 0440
    {{- end }}
    {{- if and $v.otel.endpoint $v.otel.tls.existingSecret }}
    - name: otel-tls
      secret:
        secretName: {{ $v.otel.tls.existingSecret }}
        defaultMode: 0440
    {{- end }}
{{- end }}

{{/* Combinations the schema cannot express; rendered from the gateway Deployment. */}}
{{- define "tandem.validate" -}}
{{- $v := .Values }}
{{- $as := $v.gateway.autoscaling }}
{{- if and (eq $v.mode "split") $as.enabled (gt (int $as.minReplicas) (int $as.maxReplicas)) }}
{{- fail (printf "gateway.autoscaling.minReplicas (%d) must not exceed gateway.autoscaling.maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) }}
{{- end }}
{{- $sd := $v.shutdown }}
{{- if le (int $sd.terminationGracePeriodSeconds) (add (int $sd.preStopSleepSeconds) 10) }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must exceed shutdown.preStopSleepSeconds (%d) + the servers' 10 s drain" (int $sd.terminationGracePeriodSeconds) (int $sd.preStopSleepSeconds)) }}
{{- end }}
{{- if and $v.tls.clientAuth (not $v.tls.enabled) }}
{{- fail "tls.clientAuth needs tls.enabled" }}
{{- end }}
{{- if and $v.otel.tls.existingSecret $v.otel.endpoint (not (hasPrefix "https://" (lower $v.otel.endpoint))) }}
{{- fail (printf "otel.tls.existingSecret is set but otel.endpoint (%s) is not https://: the collector would be reached in plaintext" $v.otel.endpoint) }}
{{- end }}
{{- end }}

{{/* PodDisruptionBudget for a role: (dict "root" $ "component" c "cfg" values). */}}
{{- define "tandem.pdb" -}}
{{- if .cfg.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "tandem.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tandem.componentLabels" . | nindent 4 }}
spec:
  {{- if hasKey .cfg.pdb "minAvailable" }}
  minAvailable: {{ .cfg.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .cfg.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "tandem.componentSelectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* Headless Service for a role: clients resolve every ready pod (client-side balancing). */}}
{{- define "tandem.headlessService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tandem.componentLabels" . | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "tandem.componentSelectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ int .root.Values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- if .root.Values.metrics.enabled }}
    # Only the headless Services carry the metrics port: the ServiceMonitor scrapes each pod once.
    - name: metrics
      port: {{ int .root.Values.ports.metrics }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end }}
