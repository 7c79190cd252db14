#!/usr/bin/env python3
"""Offline checks of the tandem Helm chart (helm/tandem); no cluster, helm binary or network.

    .venv/bin/pip install -r helm/requirements-test.txt
    .venv/bin/python helm/tests/test_chart.py

1. `helm lint --strict` (Helm v4 as a library) with the defaults and every ci/*.yaml.
2. Renders the defaults, every ci/*.yaml and a few variants (TLS, admin token, existing data
   claim, embedded GPU) against Kubernetes KUBE_VERSION, and validates every manifest strictly
   with kubernetes-validate (the ServiceMonitor is a CRD: its shape is checked here instead).
3. Asserts the wiring: shard addresses vs the StatefulSet, gRPC probes, GPU placement,
   restricted security contexts, HPA target, PDB and Service selectors, ServiceMonitor only
   with its API, OTel env, TLS flags.
4. values.schema.json and the templates' own checks reject bad values, naming the field.

Exits 1 when a check fails. Writes nothing: Helm's cache/config homes point at a temporary
directory that is removed at exit.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
_HELM_HOME = tempfile.TemporaryDirectory(prefix="tandem-helm-test-")
for _var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
    os.environ[_var] = os.path.join(_HELM_HOME.name, _var.lower())

import helm_python as helm  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402
from helm_python import _native  # noqa: E402

CHART = Path(__file__).resolve().parent.parent / "tandem"
KUBE_VERSION = "1.30.0"  # the chart's floor (Chart.yaml kubeVersion)
RELEASE = "rel"
NAMESPACE = "recs"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
UID = 10001
POD_INDEX_FIELD = "metadata.labels['apps.kubernetes.io/pod-index']"
COMPONENT = "app.kubernetes.io/component"


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"  FAIL {what}")
        return ok


R = Report()


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render(chart: helm.Chart, values: dict, api_versions: tuple[str, ...] = ()) -> dict[str, str]:
    """Chart.render with a Kubernetes version and extra API versions (`helm template
    --kube-version --api-versions`). helm-python-sdk 0.2.2's Chart.render does not expose those
    two options, but its C ABI's render options do, so this calls it directly."""
    opts = {
        "name": RELEASE,
        "namespace": NAMESPACE,
        "kube_version": f"v{KUBE_VERSION}",
        "api_versions": list(api_versions),
        "is_install": True,
    }
    out = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    return json.loads(out)


def documents(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(rendered[path]) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, component: str) -> dict | None:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["labels"].get(COMPONENT) == component]
    return found[0] if len(found) == 1 else None


def flag(container: dict, name: str) -> str | None:
    """A --name=value flag from the container's args (or its TANDEM_* env fallback)."""
    for arg in container.get("args", []):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    env = "TANDEM_" + name.upper().replace("-", "_")
    for e in container.get("env", []):
        if e["name"] == env and "value" in e:
            return e["value"]
    return None


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


# --- kubernetes-validate, with its schema files read once --------------------------------

_schema_cache: dict = {}
_orig_schema_contents = kubernetes_validate.utils.schema_contents


def _cached_schema_contents(filename, desired_version):
    if filename not in _schema_cache:
        _schema_cache[filename] = _orig_schema_contents(filename, desired_version)
    return _schema_cache[filename]


kubernetes_validate.utils.schema_contents = _cached_schema_contents


def validate_manifests(shape: str, docs: list[dict]) -> None:
    for d in docs:
        what = f"{shape}: {d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "ServiceMonitor":
            continue  # a CRD: check_service_monitor checks its shape
        try:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
            R.check(True, what)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            R.check(False, f"{what} does not validate against {KUBE_VERSION}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            R.check(False, f"{what}: {e.message}")


# --- the wiring ---------------------------------------------------------------------------


def check_common(shape: str, values: dict, docs: list[dict]) -> None:
    for d in docs:
        md = d["metadata"]
        R.check(md.get("namespace") == NAMESPACE, f"{shape}: {d['kind']}/{md['name']} has the release namespace")
        R.check(md["labels"].get("app.kubernetes.io/instance") == RELEASE,
                f"{shape}: {d['kind']}/{md['name']} carries the instance label")

    grpc_port = values["ports"]["grpc"]
    for w in workloads(docs):
        name = f"{shape}: {w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]["template"]["spec"]
        psc = spec.get("securityContext", {})
        R.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == UID
                and psc.get("runAsGroup") == UID and psc.get("fsGroup") == UID
                and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                f"{name}: restricted pod securityContext (non-root {UID}, fsGroup, RuntimeDefault)")
        R.check(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token")
        pre_stop = values["shutdown"]["preStopSleepSeconds"]
        R.check(spec.get("terminationGracePeriodSeconds", 30) > pre_stop + 10,
                f"{name}: grace period covers preStop + 10 s drain")
        R.check(selects(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]),
                f"{name}: selector matches its pod template")

        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            cname = f"{name} container {c['name']}"
            R.check(sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation false")
            R.check(sc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem")
            R.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cname}: capabilities drop ALL")
            R.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
                    and sc.get("runAsUser", psc.get("runAsUser")) == UID, f"{cname}: runs as {UID}")
            R.check((sc.get("seccompProfile") or psc.get("seccompProfile", {})).get("type") == "RuntimeDefault",
                    f"{cname}: seccomp RuntimeDefault")
            R.check(bool(c.get("resources", {}).get("requests")) and bool(c.get("resources", {}).get("limits")),
                    f"{cname}: resource requests and limits")

        for c in spec["containers"]:
            cname = f"{name} container {c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            R.check(ports.get("grpc") == grpc_port, f"{cname}: grpc port {grpc_port}")
            # With TLS the probes use the plaintext health-only port (--health-listen).
            tls_on = values["tls"]["enabled"]
            probe_port = ports.get("health") if tls_on else ports.get("grpc")
            if tls_on:
                R.check(flag(c, "health-listen") == f"0.0.0.0:{probe_port}",
                        f"{cname}: --health-listen on the health port under TLS")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe) or {}
                handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & set(p)
                R.check(handlers == {"grpc"} and p["grpc"].get("port") == probe_port and probe_port,
                        f"{cname}: {probe} is a native gRPC probe on the "
                        + ("plaintext health port" if tls_on else "grpc port"))
            startup = c.get("startupProbe") or {}
            R.check(startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 300,
                    f"{cname}: startup probe allows minutes for the index load")
            sleep = (c.get("lifecycle") or {}).get("preStop", {}).get("sleep", {}).get("seconds")
            R.check(sleep == (pre_stop or None), f"{cname}: preStop sleeps {pre_stop} s")
            R.check(flag(c, "max-connection-age-s") == str(values["grpc"]["maxConnectionAgeSeconds"]),
                    f"{cname}: --max-connection-age-s from values")
            R.check(flag(c, "listen") == f"0.0.0.0:{grpc_port}", f"{cname}: --listen on the grpc port")
            if values["metrics"]["enabled"]:
                R.check(flag(c, "metrics-listen") == f"0.0.0.0:{values['ports']['metrics']}"
                        and ports.get("metrics") == values["ports"]["metrics"],
                        f"{cname}: --metrics-listen and a metrics port")
            else:
                R.check(flag(c, "metrics-listen") is None and "metrics" not in ports,
                        f"{cname}: no metrics listener when metrics.enabled is false")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            R.check(mounts.get("/data", {}).get("readOnly") is True, f"{cname}: /data mounted read-only")
            R.check(flag(c, "items") == f"/data/{values['data']['itemsFile']}", f"{cname}: --items under /data")
            volumes = {v["name"]: v for v in spec["volumes"]}
            data_volume = volumes.get(mounts.get("/data", {}).get("name"), {})
            if values["data"]["source"] == "image":
                inits = spec.get("initContainers", [])
                seeds = [i for i in inits if any(m["name"] == mounts["/data"]["name"] for m in i.get("volumeMounts", []))]
                R.check("emptyDir" in data_volume and len(seeds) == 1
                        and seeds[0]["image"].startswith(values["data"]["image"]["repository"] + ":"),
                        f"{cname}: /data is an emptyDir filled by the data image's init container")
            else:
                R.check(data_volume.get("persistentVolumeClaim", {}) == {
                    "claimName": values["data"]["existingClaim"], "readOnly": True},
                    f"{cname}: /data is the existing claim, read-only")
                R.check(not spec.get("initContainers"), f"{cname}: no init container with an existing claim")

            admin = values["adminToken"]["existingSecret"]
            token = env_of(c).get("TANDEM_ADMIN_TOKEN")
            if admin:
                R.check(token is not None and token.get("valueFrom", {}).get("secretKeyRef") == {
                    "name": admin, "key": values["adminToken"]["key"]},
                    f"{cname}: admin token from Secret {admin}")
            else:
                R.check(token is None, f"{cname}: no admin token without a Secret")

            otel = values["otel"]["endpoint"]
            env = env_of(c)
            if otel:
                R.check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") == otel
                        and env.get("OTEL_SERVICE_NAME", {}).get("value") == f"tandem-{c['name']}"
                        and "OTEL_TRACES_SAMPLER" in env and "OTEL_RESOURCE_ATTRIBUTES" in env,
                        f"{cname}: OpenTelemetry env")
                names = list(env)
                R.check(names.index("K8S_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES"),
                        f"{cname}: OTEL_RESOURCE_ATTRIBUTES comes after the vars it expands")
                otel_tls = values["otel"]["tls"]
                tls_env = {n: env.get(n, {}).get("value") for n in (
                    "OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY")}
                mount = mounts.get("/etc/tandem/otel-tls", {})
                if otel_tls["existingSecret"]:
                    R.check(tls_env["OTEL_EXPORTER_OTLP_CERTIFICATE"] == "/etc/tandem/otel-tls/ca.crt"
                            and mount.get("readOnly") is True
                            and volumes.get(mount.get("name"), {}).get("secret", {}).get("secretName")
                            == otel_tls["existingSecret"],
                            f"{cname}: collector CA from Secret {otel_tls['existingSecret']}")
                    R.check((tls_env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] == "/etc/tandem/otel-tls/tls.crt"
                             and tls_env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] == "/etc/tandem/otel-tls/tls.key")
                            == bool(otel_tls["clientAuth"]),
                            f"{cname}: collector client certificate exactly when otel.tls.clientAuth")
                else:
                    R.check(not any(tls_env.values()) and not mount,
                            f"{cname}: no collector TLS files without otel.tls.existingSecret")
            else:
                R.check(not any(n.startswith("OTEL_") for n in env), f"{cname}: no OTel env without an endpoint")

            tls = values["tls"]
            if tls["enabled"]:
                R.check(flag(c, "tls-cert") and flag(c, "tls-key")
                        and mounts.get("/etc/tandem/tls", {}).get("readOnly") is True
                        and volumes.get(mounts["/etc/tandem/tls"]["name"], {}).get("secret", {}).get("secretName")
                        == tls["existingSecret"], f"{cname}: TLS cert and key from Secret {tls['existingSecret']}")
                R.check(bool(flag(c, "tls-client-ca")) == bool(tls["clientAuth"]),
                        f"{cname}: --tls-client-ca exactly when tls.clientAuth")
            else:
                R.check(not any(a.startswith("--tls") for a in c.get("args", [])), f"{cname}: no TLS flags")

    for svc in by_kind(docs, "Service"):
        name = f"{shape}: Service/{svc['metadata']['name']}"
        targets = [w for w in workloads(docs) if selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        R.check(len(targets) == 1 and targets[0]["metadata"]["labels"][COMPONENT] == svc["metadata"]["labels"][COMPONENT],
                f"{name}: selects exactly its own component's pods")
        grpc = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        R.check(len(grpc) == 1 and grpc[0].get("appProtocol") == "grpc" and grpc[0]["targetPort"] == "grpc",
                f"{name}: grpc port with appProtocol grpc")

    for pdb in by_kind(docs, "PodDisruptionBudget"):
        name = f"{shape}: PodDisruptionBudget/{pdb['metadata']['name']}"
        sel = pdb["spec"]["selector"]["matchLabels"]
        targets = [w for w in workloads(docs) if selects(sel, w["spec"]["template"]["metadata"]["labels"])]
        R.check(len(targets) == 1 and targets[0]["metadata"]["name"] == pdb["metadata"]["name"],
                f"{name}: selects exactly the pods of {pdb['metadata']['name']}")
    R.check(len(by_kind(docs, "PodDisruptionBudget")) == len(workloads(docs)),
            f"{shape}: one PodDisruptionBudget per workload")


def gpu_for(values: dict, component: str) -> dict | None:
    if component == "ranking" and values["mode"] == "split" and values["ranking"]["gpu"]["enabled"]:
        return values["ranking"]["gpu"]
    if component == "gateway" and values["mode"] == "embedded" and values["gateway"]["gpu"]["enabled"]:
        return values["gateway"]["gpu"]
    return None


def check_gpu(shape: str, values: dict, docs: list[dict]) -> None:
    for w in workloads(docs):
        comp = w["metadata"]["labels"][COMPONENT]
        spec = w["spec"]["template"]["spec"]
        gpu = gpu_for(values, comp)
        for c in spec["containers"]:
            cname = f"{shape}: {w['kind']}/{w['metadata']['name']} container {c['name']}"
            limits = c["resources"].get("limits", {})
            has_gpu = any(k.endswith("/gpu") for k in limits) or any(k.endswith("/gpu") for k in c["resources"].get("requests", {}))
            provider = flag(c, "execution-provider")
            if gpu:
                R.check(limits.get(gpu["resourceName"]) == gpu["count"], f"{cname}: {gpu['resourceName']}: {gpu['count']} in limits")
                R.check(all(spec.get("nodeSelector", {}).get(k) == v for k, v in gpu["nodeSelector"].items()),
                        f"{cname}: GPU nodeSelector")
                R.check(all(t in spec.get("tolerations", []) for t in gpu["tolerations"]), f"{cname}: GPU tolerations")
                R.check(provider == "cuda", f"{cname}: --execution-provider cuda")
                R.check(c["image"].endswith("-gpu"), f"{cname}: GPU image tag ({c['image']})")
            else:
                R.check(not has_gpu, f"{cname}: no GPU resource")
                R.check(provider in (None, "cpu"), f"{cname}: CPU execution provider")
                R.check(not c["image"].endswith("-gpu"), f"{cname}: CPU image tag")


def check_embedded(shape: str, values: dict, docs: list[dict]) -> None:
    R.check([d["kind"] for d in workloads(docs)] == ["Deployment"], f"{shape}: one workload, the gateway Deployment")
    R.check(not by_kind(docs, "HorizontalPodAutoscaler"), f"{shape}: no HPA in embedded mode")
    gw = one(docs, "Deployment", "gateway")
    if not R.check(gw is not None, f"{shape}: gateway Deployment"):
        return
    c = gw["spec"]["template"]["spec"]["containers"][0]
    R.check(c["command"] == ["/opt/tandem/bin/tandem-gateway"], f"{shape}: gateway runs tandem-gateway")
    R.check(flag(c, "retrieval-addr") is None and flag(c, "ranking-addr") is None, f"{shape}: no remote stages")
    R.check(flag(c, "model-dir") == f"/data/{values['data']['modelDir']}", f"{shape}: --model-dir under /data")
    state = values["gateway"]["userState"]
    R.check(flag(c, "user-state-mib") == str(state["memoryMiB"]), f"{shape}: --user-state-mib from gateway.userState")
    R.check(flag(c, "checkpoint-interval-s") == str(state["checkpointIntervalSeconds"]),
            f"{shape}: --checkpoint-interval-s from gateway.userState")
    R.check(flag(c, "attribution-window-min") == str(values["gateway"]["experiments"]["attributionWindowMinutes"]),
            f"{shape}: --attribution-window-min from gateway.experiments")
    R.check((flag(c, "state-dir") or "").startswith("/var/lib/tandem/"), f"{shape}: --state-dir under /var/lib/tandem")
    R.check(gw["spec"].get("replicas") == values["gateway"]["replicas"], f"{shape}: gateway replicas from values")
    vols = {v["name"]: v for v in gw["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    state = vols.get(mounts.get("/var/lib/tandem"), {})
    if values["gateway"]["persistence"]["enabled"]:
        claim = state.get("persistentVolumeClaim", {}).get("claimName")
        pvcs = [p["metadata"]["name"] for p in by_kind(docs, "PersistentVolumeClaim")]
        R.check(claim in pvcs, f"{shape}: /var/lib/tandem on the chart's PVC {claim}")
        R.check(gw["spec"]["strategy"]["type"] == "Recreate", f"{shape}: Recreate with a ReadWriteOnce state volume")
    else:
        R.check("emptyDir" in state, f"{shape}: /var/lib/tandem on an emptyDir")


def check_split(shape: str, values: dict, docs: list[dict]) -> None:
    gw = one(docs, "Deployment", "gateway")
    sts = one(docs, "StatefulSet", "retrieval")
    rk = one(docs, "Deployment", "ranking")
    if not (R.check(gw is not None, f"{shape}: gateway Deployment")
            and R.check(sts is not None, f"{shape}: retrieval StatefulSet")
            and R.check(rk is not None, f"{shape}: ranking Deployment")):
        return
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    scheme = "https" if values["tls"]["enabled"] else "http"
    domain = values["clusterDomain"]
    gwc = gw["spec"]["template"]["spec"]["containers"][0]
    rc = sts["spec"]["template"]["spec"]["containers"][0]
    kc = rk["spec"]["template"]["spec"]["containers"][0]
    R.check(gwc["command"] == ["/opt/tandem/bin/tandem-gateway"], f"{shape}: gateway runs tandem-gateway")
    R.check(rc["command"] == ["/opt/tandem/bin/tandem-retrieval"], f"{shape}: retrieval runs tandem-retrieval")
    R.check(kc["command"] == ["/opt/tandem/bin/tandem-ranking"], f"{shape}: ranking runs tandem-ranking")

    # Retrieval: shards = replicas, addressed through the governing headless Service.
    shards = sts["spec"]["replicas"]
    R.check(shards == values["retrieval"]["shards"], f"{shape}: StatefulSet replicas = retrieval.shards ({shards})")
    headless = services.get(sts["spec"]["serviceName"])
    R.check(headless is not None and headless["spec"].get("clusterIP") == "None",
            f"{shape}: StatefulSet serviceName is a headless Service")
    svc_port = next((p["port"] for p in (headless or {"spec": {"ports": []}})["spec"]["ports"] if p["name"] == "grpc"), None)
    addrs = (flag(gwc, "retrieval-addr") or "").split(",")
    expected = [f"{scheme}://{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.{domain}:{svc_port}"
                for i in range(shards)]
    R.check(len(addrs) == shards, f"{shape}: gateway --retrieval-addr lists {shards} shards (got {len(addrs)})")
    R.check(addrs == expected, f"{shape}: shard addresses are the StatefulSet pods behind the headless Service: {addrs}")

    env = env_of(rc)
    R.check(env.get("TANDEM_SHARD_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == POD_INDEX_FIELD,
            f"{shape}: shard index from the pod-index label")
    seen = set()
    for i in range(shards):
        args = [expand(a, {"TANDEM_SHARD_INDEX": str(i)}) for a in rc["args"]]
        shard = flag({"args": args}, "shard")
        state = flag({"args": args}, "state-dir")
        R.check(shard == f"{i}/{shards}", f"{shape}: pod {i} serves --shard {i}/{shards} (got {shard})")
        R.check(state is not None and state.startswith("/var/lib/tandem/") and state not in seen,
                f"{shape}: pod {i} has its own state dir on the PVC")
        seen.add(state)
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    mounts = {m["mountPath"]: m["name"] for m in rc["volumeMounts"]}
    R.check(mounts.get("/var/lib/tandem") in claims, f"{shape}: /var/lib/tandem from the volumeClaimTemplate")

    # Ranking through its headless Service.
    rk_svcs = [s for s in services.values() if s["spec"].get("clusterIP") == "None"
               and selects(s["spec"]["selector"], rk["spec"]["template"]["metadata"]["labels"])]
    rk_port = next((p["port"] for s in rk_svcs for p in s["spec"]["ports"] if p["name"] == "grpc"), None)
    R.check(len(rk_svcs) == 1 and flag(gwc, "ranking-addr")
            == f"{scheme}://{rk_svcs[0]['metadata']['name']}.{NAMESPACE}.svc.{domain}:{rk_port}",
            f"{shape}: --ranking-addr is the ranking headless Service ({flag(gwc, 'ranking-addr')})")
    R.check(rk["spec"]["replicas"] == values["ranking"]["replicas"], f"{shape}: ranking replicas from values")
    R.check(flag(kc, "model-dir") == f"/data/{values['data']['modelDir']}", f"{shape}: ranking --model-dir")

    # Gateway: a ClusterIP Service for callers and a headless one.
    gw_svcs = [s for s in services.values() if selects(s["spec"]["selector"], gw["spec"]["template"]["metadata"]["labels"])]
    R.check(sorted(s["spec"].get("clusterIP") == "None" for s in gw_svcs) == [False, True],
            f"{shape}: gateway has a ClusterIP and a headless Service")
    for comp in ("gateway", "retrieval", "ranking"):
        R.check(any(s["spec"].get("clusterIP") == "None" and s["metadata"]["labels"][COMPONENT] == comp
                    for s in services.values()), f"{shape}: headless Service for {comp}")
    R.check(flag(gwc, "tls-ca") == ("/etc/tandem/tls/ca.crt" if values["tls"]["enabled"] else None),
            f"{shape}: gateway --tls-ca exactly with TLS")

    # Shared user state: the Redis URL from the Secret (never in the args), or from values.
    redis = values["gateway"]["userState"]["redis"]
    store_env = env_of(gwc).get("TANDEM_STATE_STORE", {})
    if redis["existingSecret"]:
        R.check(store_env.get("valueFrom", {}).get("secretKeyRef") == {"name": redis["existingSecret"], "key": redis["key"]}
                and flag(gwc, "state-store") is None,
                f"{shape}: Redis URL from the Secret {redis['existingSecret']}/{redis['key']}")
    else:
        R.check(not store_env and flag(gwc, "state-store") == (redis["url"] or None),
                f"{shape}: --state-store exactly when gateway.userState.redis.url is set")
    shared = bool(redis["existingSecret"] or redis["url"])
    R.check((flag(gwc, "redis-key-prefix") is not None) == shared, f"{shape}: Redis settings only with Redis")

    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    auto = values["gateway"]["autoscaling"]
    if auto["enabled"]:
        ok = len(hpas) == 1
        ref = hpas[0]["spec"]["scaleTargetRef"] if ok else {}
        R.check(ok and hpas[0]["apiVersion"] == "autoscaling/v2"
                and ref == {"apiVersion": "apps/v1", "kind": "Deployment", "name": gw["metadata"]["name"]},
                f"{shape}: autoscaling/v2 HPA targets the gateway Deployment")
        R.check(ok and hpas[0]["spec"]["minReplicas"] == auto["minReplicas"]
                and hpas[0]["spec"]["maxReplicas"] == auto["maxReplicas"], f"{shape}: HPA bounds from values")
        R.check("replicas" not in gw["spec"], f"{shape}: gateway Deployment leaves replicas to the HPA")
    else:
        R.check(not hpas and gw["spec"].get("replicas") == values["gateway"]["replicas"],
                f"{shape}: no HPA, fixed gateway replicas")


def check_service_monitor(shape: str, values: dict, docs: list[dict], with_api: bool) -> None:
    sms = by_kind(docs, "ServiceMonitor")
    wanted = values["metrics"]["enabled"] and values["metrics"]["serviceMonitor"]["enabled"] and with_api
    R.check(len(sms) == (1 if wanted else 0),
            f"{shape}: ServiceMonitor {'present' if wanted else 'absent'} "
            f"({'with' if with_api else 'without'} {SERVICE_MONITOR_API})")
    if not (wanted and sms):
        return
    sm = sms[0]
    R.check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{shape}: ServiceMonitor apiVersion")
    spec = sm["spec"]
    ep = spec.get("endpoints", [])
    R.check(len(ep) == 1 and ep[0].get("port") == "metrics" and ep[0].get("path") == "/metrics"
            and ep[0].get("scheme") == "http", f"{shape}: ServiceMonitor scrapes port metrics, /metrics over http")
    R.check(spec.get("namespaceSelector", {}).get("matchNames") == [NAMESPACE], f"{shape}: ServiceMonitor namespace")
    for k, v in values["metrics"]["serviceMonitor"]["labels"].items():
        R.check(sm["metadata"]["labels"].get(k) == v, f"{shape}: ServiceMonitor label {k}")
    scraped = [s for s in by_kind(docs, "Service")
               if selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])
               and any(p["name"] == "metrics" for p in s["spec"]["ports"])]
    comps = sorted(s["metadata"]["labels"][COMPONENT] for s in scraped)
    expect = ["gateway", "ranking", "retrieval"] if values["mode"] == "split" else ["gateway"]
    R.check(comps == expect and all(s["spec"].get("clusterIP") == "None" for s in scraped),
            f"{shape}: ServiceMonitor reaches each role once, through its headless Service ({comps})")


def check_shape(chart: helm.Chart, defaults: dict, shape: str, overrides: dict) -> None:
    values = deep_merge(defaults, overrides)
    rendered = render(chart, overrides)
    R.check(render(chart, overrides) == rendered, f"{shape}: renders deterministically")
    docs = documents(rendered)
    validate_manifests(shape, docs)
    check_common(shape, values, docs)
    check_gpu(shape, values, docs)
    (check_split if values["mode"] == "split" else check_embedded)(shape, values, docs)
    check_service_monitor(shape, values, docs, with_api=False)
    with_sm = documents(render(chart, overrides, api_versions=(SERVICE_MONITOR_API,)))
    check_service_monitor(shape, values, with_sm, with_api=True)
    kinds: dict[str, int] = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    print(f"  {shape}: {len(docs)} manifests ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")


def expect_rejected(chart: helm.Chart, what: str, values: dict, field: str, via: str) -> None:
    try:
        if via == "schema":
            chart.validate_schema(values)
        else:
            render(chart, values)
    except (helm.HelmValuesError, helm.HelmRenderError) as e:
        msg = " ".join(str(e).split())
        R.check(field in msg, f"{what}: the message names {field!r}: {msg[:300]}")
        print(f"  rejected {what}: {msg[:200]}")
        return
    R.check(False, f"{what}: accepted, expected a rejection naming {field!r}")


def main() -> int:
    started = time.monotonic()
    print(f"helm {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
          f"kubernetes-validate {kubernetes_validate.__version__}, Kubernetes {KUBE_VERSION}")
    ci_files = sorted((CHART / "ci").glob("*.yaml"))
    shapes: dict[str, dict] = {"defaults": {}}
    for f in ci_files:
        shapes[f"ci/{f.name}"] = yaml.safe_load(f.read_text()) or {}
    R.check(len(ci_files) >= 3, "ci/ has a values file per supported shape")

    print("lint --strict")
    for shape, overrides in shapes.items():
        report = helm.lint(CHART, overrides or None, strict=True, kube_version=f"v{KUBE_VERSION}")
        bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
        info = [m["error"] for m in report["messages"] if m["severity"] < 2]
        R.check(not bad, f"lint {shape}: {bad}")
        print(f"  {shape}: {'ok' if not bad else 'FAILED'}{' (info: ' + '; '.join(info) + ')' if info else ''}")

    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
        R.check(chart.metadata.get("apiVersion") == "v2" and chart.metadata.get("appVersion") == "0.1.0",
                "Chart.yaml: apiVersion v2, appVersion 0.1.0")

        # Variants that need Secrets or data a ci/ install could not provide.
        variants = {
            "split + mutual TLS + admin token": {
                "mode": "split", "retrieval": {"shards": 4},
                "tls": {"enabled": True, "existingSecret": "tandem-tls", "clientAuth": True},
                "adminToken": {"existingSecret": "tandem-admin", "key": "token"},
            },
            "embedded + TLS + GPU": {
                "mode": "embedded", "tls": {"enabled": True, "existingSecret": "tandem-tls"},
                "gateway": {"gpu": {"enabled": True}},
            },
            "split, data from a claim, no metrics, fixed gateway replicas": {
                "mode": "split", "data": {"source": "existingClaim", "existingClaim": "tandem-data"},
                "metrics": {"enabled": False, "serviceMonitor": {"enabled": True}},
                "gateway": {"autoscaling": {"enabled": False}, "replicas": 3},
                "ranking": {"gpu": {"enabled": False}},
            },
            "split, traces to a collector over mutual TLS": {
                "mode": "split",
                "otel": {"endpoint": "https://otel-collector.observability.svc:4317",
                         "tls": {"existingSecret": "otel-client-tls", "clientAuth": True}},
            },
            "embedded without persistence or preStop": {
                "gateway": {"persistence": {"enabled": False}, "replicas": 2},
                "shutdown": {"preStopSleepSeconds": 0, "terminationGracePeriodSeconds": 15},
            },
        }
        print("render + validate + wiring")
        for shape, overrides in {**shapes, **variants}.items():
            check_shape(chart, defaults, shape, overrides)

        print("bad values are rejected")
        split = {"mode": "split"}
        expect_rejected(chart, "mode: banana", {"mode": "banana"}, "/mode", "schema")
        expect_rejected(chart, "retrieval.shards: 0", {**split, "retrieval": {"shards": 0}}, "/retrieval/shards", "schema")
        expect_rejected(chart, "ranking.replicas: 0", {**split, "ranking": {"replicas": 0}}, "/ranking/replicas", "schema")
        expect_rejected(chart, "gateway.autoscaling.minReplicas: 0",
                        {**split, "gateway": {"autoscaling": {"minReplicas": 0}}}, "/gateway/autoscaling/minReplicas", "schema")
        expect_rejected(chart, "data.source: http", {"data": {"source": "http"}}, "/data/source", "schema")
        expect_rejected(chart, "tls.enabled without a Secret", {"tls": {"enabled": True}}, "/tls/existingSecret", "schema")
        expect_rejected(chart, "a Redis URL without its scheme",
                        {"gateway": {"userState": {"redis": {"url": "redis.local:6379"}}}},
                        "/gateway/userState/redis/url", "schema")
        expect_rejected(chart, "otel.tls.clientAuth without a Secret",
                        {"otel": {"endpoint": "https://c:4317", "tls": {"clientAuth": True}}},
                        "/otel/tls/existingSecret", "schema")
        expect_rejected(chart, "collector TLS files for a plaintext endpoint",
                        {"otel": {"endpoint": "http://c:4317", "tls": {"existingSecret": "otel-client-tls"}}},
                        "otel.tls.existingSecret", "render")
        expect_rejected(chart, "a misspelt top-level key", {"mdoe": "split"}, "mdoe", "schema")
        expect_rejected(chart, "retrieval.shards: 0 at install", {**split, "retrieval": {"shards": 0}}, "/retrieval/shards", "render")
        expect_rejected(chart, "HPA min > max", {**split, "gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
                        "gateway.autoscaling.minReplicas", "render")
        expect_rejected(chart, "embedded persistence with 2 replicas", {"gateway": {"replicas": 2}}, "gateway.replicas", "render")
        expect_rejected(chart, "grace period shorter than preStop + drain",
                        {"shutdown": {"preStopSleepSeconds": 25, "terminationGracePeriodSeconds": 30}},
                        "shutdown.terminationGracePeriodSeconds", "render")

    took = time.monotonic() - started
    print(f"{R.passed} checks passed, {len(R.failures)} failed, {took:.1f} s")
    for f in R.failures:
        print(f"FAILED: {f}")
    return 1 if R.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        _HELM_HOME.cleanup()
