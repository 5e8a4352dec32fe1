"""The Helm chart helm/pvgate: lint, schema, strictly valid manifests, and what they promise.

Each values file under tests/deploy/values/ is rendered with Helm's own Go SDK
(helm-python-sdk, no helm binary), linted strictly, and every manifest validated with
kubernetes-validate in strict mode (unknown fields refused) against the oldest Kubernetes
the chart supports and the newest the validator knows.  ServiceMonitor and PrometheusRule
(the Prometheus Operator's CRDs) have no schema there: they are validated against the
schemas in tests/deploy/schemas/, written for the part of those CRDs the chart uses.

Then, on the rendered objects: resources, probes and a non-root, read-only, capability-free
security context for every container; no secret value outside a Secret; the migration Job
a pre-install/pre-upgrade hook that runs before the Deployments, reading only hook objects
of lower weight (or the existing Secret); app.kubernetes.io/* labels; the TOML files load
with pvgate's own settings loader; the termination grace covers the shutdown grace.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from billing.settings import BillingSettings
from gateway.settings import GatewaySettings
from metering.config import build
from tests.deploy import chart
from tests.deploy.chart import VALUES_FILES, containers, named, objects, of_kind, render_file
from tests.deploy.settings_schema import config_schemas, strip_descriptions

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())
CRD_SCHEMAS = Path(__file__).resolve().parent / "schemas"
PVGATE_CONTAINERS = {"gateway", "billing", "migrate"}
# Redis settings the chart renders for Sentinel, TLS and an ACL user: a pvgate that does not
# know them yet refuses them as unknown, so `rendered_settings` takes out (and reports) the
# ones its loader lacks.
REDIS_CONNECTION_SETTINGS = {"sentinels", "sentinel_master", "username", "tls", "tls_ca_file",
                             "tls_cert_file", "tls_key_file"}  # fmt: skip
# Secret settings, given as environment variables.
REDIS_SECRET_ENV = {"PVGATE_REDIS_URL", "PVGATE_REDIS_PASSWORD", "PVGATE_REDIS_SENTINEL_PASSWORD"}
COMMON_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
COMPONENTS = {"gateway", "billing", "migrations", "dev-redis"}

per_values_file = pytest.mark.parametrize("name", VALUES_FILES)


def objs(name: str) -> list[dict[str, Any]]:
    return objects(render_file(name))


# --- lint, schema, validation ---------------------------------------------------------------


def test_there_are_values_files_for_every_shape():
    assert {"defaults", "redis-cluster-hpa", "existing-secret-sentinel", "everything-off"} <= set(
        VALUES_FILES
    )


@per_values_file
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_lint_strict(name, kube):
    report = chart.lint(chart.values(name), kube_version=f"v{kube}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not report["errors"], report
    assert not problems, report


@per_values_file
def test_values_pass_the_schema(name):
    chart.chart().validate_schema(chart.merged(name))


@per_values_file
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_manifest_is_valid_strictly(name, kube):
    checked = []
    for obj in objs(name):
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            crd_validator(obj["kind"]).validate(obj)
        else:
            try:
                kubernetes_validate.validate(obj, kube, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{where}: {exc.message} at {list(exc.path)}") from exc
        checked.append(where)
    assert checked


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((CRD_SCHEMAS / f"{kind.lower()}-monitoring-v1.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def test_crd_schemas_refuse_what_the_operator_would():
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "30s"}]},
    }
    assert not crd_validator("ServiceMonitor").is_valid(monitor)
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "for": "2 m"}]}]},
    }
    assert not crd_validator("PrometheusRule").is_valid(rule)


@pytest.mark.parametrize(
    ("bad", "refused"),
    [
        ({"gateway": {"config": {"limits": {"shutdown_grace": 5}}}}, "shutdown_grace"),
        ({"gateway": {"config": {"failure": {"mode": "fail_opn"}}}}, "fail_open"),
        ({"gateway": {"config": {"listen": "0.0.0.0:80"}}}, "listen"),
        ({"gateway": {"config": {"redis": {"url": "redis://x:6379/0"}}}}, "url"),
        ({"billing": {"config": {"database_url": "sqlite:///x.db"}}}, "database_url"),
        ({"gateway": {"config": {"site": [{"host": "a.test"}]}}}, "enterprise_id"),
        ({"gatway": {"replicas": 2}}, "gatway"),
        ({"redis": {"mode": "sentinal"}}, "/redis/mode"),
        ({"secrets": {"billingEnv": {"WECOM_SECRET": "x"}}}, "WECOM_SECRET"),
    ],
)
def test_schema_refuses_unknown_and_ill_typed_values(bad, refused):
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.chart().validate_schema(
            chart.chart().merge_values({**chart.values("defaults"), **bad})
        )
    assert refused in str(caught.value)


def test_config_schema_is_the_settings_dataclasses():
    """values.schema.json describes gateway.config and billing.config exactly as pvgate's
    settings are: a setting added or renamed in gateway/settings.py or billing/settings.py
    must be added to the schema (tests/deploy/settings_schema.py derives it)."""
    schema = chart.chart().schema
    assert schema is not None
    expected = config_schemas()
    for component in ("gateway", "billing"):
        found = strip_descriptions(schema["properties"][component]["properties"]["config"])
        assert found == expected[component], (
            f"values.schema.json properties.{component}.properties.config is not what "
            f"{component}'s settings are; PVGATE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest "
            "tests/deploy/test_golden.py rewrites it to:\n"
            + json.dumps(expected[component], indent=2)
        )


def _leaves(values: dict[str, Any], schema: dict[str, Any], path: str) -> Iterator[str]:
    """Paths of values.yaml that the schema does not describe by name."""
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        described = schema.get("properties", {}).get(key)
        if described is None:
            yield where
            continue
        if "type" not in described and "const" not in described:
            yield f"{where} (no type)"
        if isinstance(value, dict) and "properties" in described:
            yield from _leaves(value, described, where)


def test_schema_describes_every_value():
    schema = chart.chart().schema
    assert schema is not None
    defaults = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
    assert list(_leaves(defaults, schema, "")) == []


# --- what every container promises -------------------------------------------------------


@per_values_file
def test_every_container_has_resources(name):
    for workload, _, container in containers(objs(name)):
        resources = container.get("resources") or {}
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
        assert "memory" in resources.get("limits", {}), where


@per_values_file
def test_long_running_containers_have_both_probes(name):
    http_paths = {"gateway": ("/healthz", "/readyz"), "billing": ("/healthz", "/healthz")}
    for workload, _, container in containers(objs(name)):
        if workload["kind"] == "Job":
            continue  # runs to completion
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert "livenessProbe" in container, where
        assert "readinessProbe" in container, where
        if container["name"] in http_paths:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            live, ready = (
                container["livenessProbe"]["httpGet"],
                container["readinessProbe"]["httpGet"],
            )
            assert (live["path"], ready["path"]) == http_paths[container["name"]], where
            assert live["port"] in ports, where
            assert ready["port"] in ports, where


@per_values_file
def test_every_pod_runs_as_non_root_read_only_without_capabilities(name):
    for workload, spec, container in containers(objs(name)):
        where = f"{workload['metadata']['name']}/{container['name']}"
        pod, own = spec.get("securityContext", {}), container.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert own.get("runAsNonRoot") is True, where
        assert own.get("runAsUser", pod.get("runAsUser", 0)) != 0, where
        assert own.get("readOnlyRootFilesystem") is True, where
        assert own.get("allowPrivilegeEscalation") is False, where
        assert own.get("capabilities", {}).get("drop") == ["ALL"], where
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec.get("enableServiceLinks") is False, where  # no PVGATE_*-looking variables


@per_values_file
def test_pvgate_containers_have_a_writable_tmp_and_read_only_config(name):
    for workload, spec, container in containers(objs(name)):
        if container["name"] not in PVGATE_CONTAINERS:
            continue
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], workload["metadata"]["name"]
        config = mounts["/etc/pvgate/config"]
        assert config["readOnly"] is True
        assert "configMap" in volumes[config["name"]]


# --- secrets --------------------------------------------------------------------------------


def secret_values(name: str) -> set[str]:
    """Every secret string a values file gives, and the password inside each URL."""
    found: set[str] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, str) and node and path[0] not in ("existingSecret", "keys"):
            found.add(node)
            if "://" in node and urlsplit(node).password:
                found.add(str(urlsplit(node).password))
            for line in node.splitlines():  # PEM bodies
                if line.strip() and not line.startswith("-----"):
                    found.add(line.strip())

    walk(chart.values(name).get("secrets", {}), ())
    return found


@per_values_file
def test_no_secret_value_outside_a_secret(name):
    secrets = secret_values(name)
    if name != "everything-off" and name != "existing-secret-sentinel":
        assert secrets, "this values file should carry secrets to check"
    for obj in objs(name):
        if obj["kind"] == "Secret":
            continue
        text = json.dumps(obj, ensure_ascii=False)
        for secret in secrets:
            encoded = base64.b64encode(secret.encode()).decode()
            where = f"{obj['kind']} {obj['metadata']['name']} holds a secret value"
            assert secret not in text, where
            assert encoded not in text, where


@per_values_file
def test_configmaps_hold_no_secret_settings(name):
    for cm in of_kind(objs(name), "ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            settings = tomllib.loads(text)
            assert "database_url" not in settings, cm["metadata"]["name"]
            assert not {"password", "sentinel_password"} & set(settings.get("redis", {}))


def test_the_database_url_reaches_billing_and_migrations_only():
    found = {}
    for _, _, container in containers(objs("defaults")):
        names = {e["name"] for e in container.get("env", [])}
        found[container["name"]] = "PVGATE_DATABASE_URL" in names
    assert found == {"gateway": False, "billing": True, "migrate": True}


def test_an_existing_secret_is_used_and_none_is_made():
    rendered = objs("existing-secret-sentinel")
    assert of_kind(rendered, "Secret") == []
    refs = {}
    for _, spec, container in containers(rendered):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                refs[(container["name"], env["name"])] = (
                    ref["name"],
                    ref["key"],
                    ref.get("optional"),
                )
        tls = [v for v in spec["volumes"] if v["name"] == "redis-tls"]
        if container["name"] in ("gateway", "billing"):
            assert tls[0]["secret"]["secretName"] == "redis-client-tls"
    secret = "pvgate-prod-secrets"
    assert refs[("billing", "PVGATE_DATABASE_URL")] == (secret, "ledger-url", None)
    assert refs[("migrate", "PVGATE_DATABASE_URL")] == (secret, "ledger-url", None)
    for component in ("gateway", "billing"):
        assert refs[(component, "PVGATE_REDIS_PASSWORD")] == (secret, "redis-password", True)
        assert refs[(component, "PVGATE_REDIS_SENTINEL_PASSWORD")] == (
            secret,
            "redis-sentinel-password",
            True,
        )


def _setting_env_names(cls: type, prefix: tuple[str, ...] = ("PVGATE",)) -> set[str]:
    names = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            names |= _setting_env_names(hint, (*prefix, field.name))
        else:
            names.add("_".join((*prefix, field.name)).upper())
    return names


@per_values_file
def test_environment_variables_are_pvgate_settings(name):
    """Every PVGATE_* variable the chart sets names a setting of that process (or one of
    the announced Redis secrets): a misspelt name would be silently ignored by pvgate."""
    known = {
        "gateway": _setting_env_names(GatewaySettings) | REDIS_SECRET_ENV,
        "billing": _setting_env_names(BillingSettings) | REDIS_SECRET_ENV,
        "migrate": _setting_env_names(BillingSettings),
    }
    given = chart.values(name)
    passed_through = set(given.get("secrets", {}).get("billingEnv", {}))
    for component in ("gateway", "billing"):
        passed_through |= {e["name"] for e in given.get(component, {}).get("extraEnv", [])}
    for _, _, container in containers(objs(name)):
        if container["name"] not in known:
            continue
        for env in container.get("env", []):
            if env["name"] not in passed_through:
                assert env["name"] in known[container["name"]], (container["name"], env["name"])


# --- settings files --------------------------------------------------------------------------


def _redis_fields(container_name: str) -> set[str]:
    cls = GatewaySettings if container_name == "gateway" else BillingSettings
    hint = typing.get_type_hints(cls)["redis"]
    return {f.name for f in dataclasses.fields(hint)}


def rendered_settings(name: str, container_name: str) -> tuple[dict[str, Any], set[str]]:
    """The TOML a container is started with (--config), less the Redis settings this
    pvgate's loader does not know yet (returned as the second item)."""
    rendered = objs(name)
    for _, spec, container in containers(rendered):
        if container["name"] != container_name:
            continue
        path = container["args"][container["args"].index("--config") + 1]
        mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        cm = named(rendered, "ConfigMap", volume["configMap"]["name"])
        data = tomllib.loads(cm["data"][path.rsplit("/", 1)[1]])
        unknown = set(data.get("redis", {})) - _redis_fields(container_name)
        assert unknown <= REDIS_CONNECTION_SETTINGS, unknown
        for key in unknown:
            del data["redis"][key]
        return data, unknown
    raise AssertionError(f"no container {container_name}")


@per_values_file
def test_rendered_settings_load_with_pvgate_s_loader(name):
    """Keys exactly as the settings dataclasses name them: pvgate's own loader takes them."""
    present = {c["name"] for _, _, c in containers(objs(name))}
    for container_name, cls in (
        ("gateway", GatewaySettings),
        ("billing", BillingSettings),
        ("migrate", BillingSettings),
    ):
        if container_name not in present:
            continue
        data, _ = rendered_settings(name, container_name)
        settings: Any = build(cls, data, {})
        if container_name != "migrate":
            ports = {
                p["name"]: p["containerPort"]
                for _, _, c in containers(objs(name))
                if c["name"] == container_name
                for p in c["ports"]
            }
            metrics_host, _, metrics_port = settings.metrics_listen.rpartition(":")
            assert metrics_host == "0.0.0.0"
            assert int(metrics_port) == ports["metrics"]
            assert int(settings.listen.rpartition(":")[2]) in ports.values()


def test_settings_follow_the_values():
    gateway, _ = rendered_settings("redis-cluster-hpa", "gateway")
    settings = build(GatewaySettings, gateway, {})
    assert settings.redis.cluster_nodes[0].startswith("redis-cluster-0.")
    assert settings.failure.mode == "fail_closed"
    assert settings.redis.timeout_ms == 40
    assert [s.host for s in settings.site] == ["landing.example.com", "*.h5.example.com"]
    billing, _ = rendered_settings("redis-cluster-hpa", "billing")
    assert build(BillingSettings, billing, {}).review.deny_words == ("赌博", "casino")
    sentinel, unknown = rendered_settings("existing-secret-sentinel", "gateway")
    redis = {**sentinel["redis"], **dict.fromkeys(unknown, "(not known to this pvgate)")}
    assert set(redis) == {"sentinels", "sentinel_master", "tls", "tls_ca_file", "tls_cert_file",
                          "tls_key_file"}  # fmt: skip
    if not unknown:
        found: Any = build(GatewaySettings, sentinel, {}).redis
        assert found.sentinels[0] == "sentinel-0.redis.svc:26379"
        assert found.sentinel_master == "pvgate"
        assert found.tls_ca_file == "/etc/pvgate/redis-tls/ca.crt"
    tls, _ = rendered_settings("redis-tls-values", "billing")
    assert tls["redis"]["url"] == "rediss://redis.cache.svc:6380/0"
    assert tls["redis"]["tls_key_file"] == "/etc/pvgate/redis-tls/tls.key"
    dev, _ = rendered_settings("everything-on", "gateway")
    assert dev["redis"]["url"] == "redis://shop-pvgate-dev-redis:6379/0"


@per_values_file
def test_workers_and_termination_grace_follow_the_settings(name):
    merged = chart.merged(name)
    rendered = objs(name)
    if not merged["gateway"]["enabled"]:
        return
    data, _ = rendered_settings(name, "gateway")
    grace = build(GatewaySettings, data, {}).limits.shutdown_grace_s
    deployment = named(rendered, "Deployment", "shop-pvgate-gateway")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    assert args[args.index("--workers") + 1] == str(merged["gateway"]["workers"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    sleep = int(pre_stop[1]) if pre_stop else 0
    assert sleep == merged["gateway"]["preStopSleepSeconds"]
    assert spec["terminationGracePeriodSeconds"] > sleep + grace


# --- hooks and order ------------------------------------------------------------------------


@per_values_file
def test_migrations_run_as_a_hook_before_the_deployments(name):
    rendered = objs(name)
    jobs = of_kind(rendered, "Job")
    if not chart.merged(name)["migrations"]["enabled"]:
        assert jobs == []
        return
    (job,) = jobs
    job_hook = chart.hook(job)
    assert job_hook is not None
    events, weight = job_hook
    assert events == {"pre-install", "pre-upgrade"}
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][0] == "migrate"
    # Hooks run before every regular object, and the Deployments are regular objects.
    for obj in rendered:
        if obj["kind"] in ("Deployment", "Service", "HorizontalPodAutoscaler"):
            assert chart.hook(obj) is None, obj["metadata"]["name"]
    # What the Job reads exists when it runs: hooks of a lower weight, or the existing Secret.
    spec = job["spec"]["template"]["spec"]
    needed = [("ConfigMap", v["configMap"]["name"]) for v in spec["volumes"] if "configMap" in v]
    needed += [("Secret", v["secret"]["secretName"]) for v in spec["volumes"] if "secret" in v]
    needed += [
        ("Secret", env["valueFrom"]["secretKeyRef"]["name"])
        for env in spec["containers"][0].get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    assert needed
    existing = chart.merged(name)["secrets"]["existingSecret"]
    for kind, ref in needed:
        if kind == "Secret" and ref == existing:
            assert not [o for o in of_kind(rendered, "Secret") if o["metadata"]["name"] == ref]
            continue
        dependency = named(rendered, kind, ref)
        dependency_hook = chart.hook(dependency)
        assert dependency_hook is not None, f"{kind} {ref} is no hook: absent when the Job runs"
        assert dependency_hook[0] >= events, (kind, ref)
        assert dependency_hook[1] < weight, (kind, ref)


def test_hook_objects_are_deleted_once_succeeded():
    for obj in objs("defaults"):
        if chart.hook(obj) is not None:
            policy = obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
            assert set(policy.split(",")) == {"before-hook-creation", "hook-succeeded"}


# --- labels ---------------------------------------------------------------------------------


@per_values_file
def test_labels_follow_app_kubernetes_io(name):
    rendered = objs(name)
    for obj in rendered:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert all(key in labels for key in COMMON_LABELS), where
        assert labels["app.kubernetes.io/name"] == "pvgate", where
        assert labels["app.kubernetes.io/instance"] == chart.RELEASE, where
        assert labels["app.kubernetes.io/part-of"] == "pvgate", where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["app.kubernetes.io/version"] == chart.chart().metadata["appVersion"], where
        if obj["kind"] not in ("ConfigMap", "Secret", "ServiceAccount", "PrometheusRule"):
            assert labels.get("app.kubernetes.io/component") in COMPONENTS, where
    for workload, template in chart.pod_specs(rendered):
        pod_labels = template["metadata"]["labels"]
        assert all(key in pod_labels for key in COMMON_LABELS)
        assert pod_labels["app.kubernetes.io/component"] in COMPONENTS
        if workload["kind"] == "Deployment":
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pod_labels.items()
            assert "app.kubernetes.io/version" not in selector  # selectors are immutable


@per_values_file
def test_each_service_selects_one_component(name):
    rendered = objs(name)
    pods = [
        (w["metadata"]["name"], t["metadata"]["labels"])
        for w, t in chart.pod_specs(rendered)
        if w["kind"] == "Deployment"
    ]
    for service in of_kind(rendered, "Service"):
        selector = service["spec"]["selector"]
        chosen = [n for n, labels in pods if selector.items() <= labels.items()]
        assert len(chosen) == 1, (service["metadata"]["name"], chosen)
        ports = {
            p["name"]
            for w, t in chart.pod_specs(rendered)
            if w["metadata"]["name"] == chosen[0]
            for c in t["spec"]["containers"]
            for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


# --- the optional objects -----------------------------------------------------------------


def test_monitoring_objects_only_where_their_api_is_served():
    defaults = chart.values("defaults")
    kinds = {o["kind"] for o in objects(chart.render(defaults))}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert "monitoring.requireAPI=false" in chart.render(defaults)[chart.NOTES]
    with_api = objects(chart.render(defaults, api_versions=["monitoring.coreos.com/v1"]))
    listed = [o["kind"] for o in with_api]
    if "ServiceMonitor" not in listed:
        pytest.skip("this helm-python-sdk's render ignores api_versions (no capability check)")
    assert listed.count("ServiceMonitor") == 2
    assert listed.count("PrometheusRule") == 1
    forced = {o["kind"] for o in objs("redis-cluster-hpa")}  # monitoring.requireAPI: false
    assert {"ServiceMonitor", "PrometheusRule"} <= forced
    off = {o["kind"] for o in objs("everything-off")}
    assert not off & {"ServiceMonitor", "PrometheusRule"}


def test_service_monitors_scrape_the_metrics_ports_as_the_rules_expect():
    rendered = objs("redis-cluster-hpa")
    jobs = {}
    for monitor in of_kind(rendered, "ServiceMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        (relabel,) = endpoint["relabelings"]
        assert relabel["targetLabel"] == "job"
        selector = monitor["spec"]["selector"]["matchLabels"]
        scraped = [
            s
            for s in of_kind(rendered, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
            and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
        ]
        assert len(scraped) == 1
        jobs[relabel["replacement"]] = scraped[0]["metadata"]["name"]
    assert jobs == {
        "pvgate-gateway": "shop-pvgate-gateway-metrics",
        "pvgate-billing": "shop-pvgate-billing",
    }
    rules = (chart.ROOT / "deploy" / "prometheus" / "rules.yaml").read_text()
    assert 'job="pvgate-gateway"' in rules
    assert 'job="pvgate-billing"' in rules


def test_prometheus_rule_is_the_rules_file():
    (rule,) = of_kind(objs("redis-cluster-hpa"), "PrometheusRule")
    expected = yaml.safe_load((chart.ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_is_the_dashboard_for_the_grafana_sidecar():
    dashboard = named(objs("defaults"), "ConfigMap", "shop-pvgate-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard["data"]["pvgate.json"])
    assert shipped == json.loads((chart.ROOT / "deploy" / "grafana" / "pvgate.json").read_text())
    folder = named(objs("everything-on"), "ConfigMap", "shop-pvgate-dashboard")
    assert folder["metadata"]["annotations"] == {"grafana_folder": "pvgate"}


def test_chart_files_are_the_deploy_files():
    """The chart ships deploy/ through links in files/ (the packaged chart holds copies)."""
    files = chart.CHART_DIR / "files"
    for shipped, source in (
        ("grafana-dashboard.json", "deploy/grafana/pvgate.json"),
        ("prometheus-rules.yaml", "deploy/prometheus/rules.yaml"),
    ):
        assert (files / shipped).resolve() == (chart.ROOT / source).resolve()


@pytest.mark.parametrize("name", ["existing-secret-sentinel", "everything-on"])
def test_the_ingress_exposes_only_the_wecom_callbacks(name):
    (ingress,) = of_kind(objs(name), "Ingress")
    for rule in ingress["spec"]["rules"]:
        (path,) = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/wecom/callback/", "Prefix")
        assert path["backend"]["service"] == {
            "name": "shop-pvgate-billing",
            "port": {"name": "admin"},
        }
    assert of_kind(objs("defaults"), "Ingress") == []


def test_autoscaling_replaces_the_replica_count():
    rendered = objs("redis-cluster-hpa")
    (hpa,) = of_kind(rendered, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "shop-pvgate-gateway"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 30)
    assert "replicas" not in named(rendered, "Deployment", "shop-pvgate-gateway")["spec"]
    assert named(rendered, "Deployment", "shop-pvgate-billing")["spec"]["replicas"] == 3
    budgets = {p["metadata"]["name"]: p["spec"] for p in of_kind(rendered, "PodDisruptionBudget")}
    assert budgets["shop-pvgate-gateway"]["minAvailable"] == 2
    assert of_kind(objs("defaults"), "HorizontalPodAutoscaler") == []


def test_everything_off_is_a_gateway_alone():
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objs("everything-off"))
    assert kinds == [
        ("ConfigMap", "shop-pvgate-config"),
        ("Deployment", "shop-pvgate-gateway"),
        ("Service", "shop-pvgate-gateway"),
        ("Service", "shop-pvgate-gateway-metrics"),
    ]


def test_the_dev_redis_is_off_by_default_and_warned_about():
    assert not [o for o in objs("defaults") if "dev-redis" in o["metadata"]["name"]]
    rendered = render_file("everything-on")
    assert named(objects(rendered), "Deployment", "shop-pvgate-dev-redis")
    assert "WARNING: devRedis is enabled" in rendered[chart.NOTES]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "secrets.databaseUrl"),
        ({"redis": {"url": "redis://:pw@redis:6379/0"}}, "must not hold credentials"),
        ({"gateway": {"terminationGracePeriodSeconds": 12}}, "must exceed"),
        ({"redis": {"mode": "cluster"}}, "redis.clusterNodes"),
        ({"redis": {"mode": "sentinel"}}, "redis.sentinels"),
        ({"redis": {"tls": {"enabled": True}}}, "redis.tls.existingSecret"),
        ({"devRedis": {"enabled": True}, "redis": {"mode": "cluster", "clusterNodes": ["a:1"]}},
         "devRedis needs"),
    ],
)  # fmt: skip
def test_what_cannot_work_fails_naming_the_value(values, message):
    given = values if not values else {**chart.values("defaults"), **values}
    with pytest.raises(helm_python.HelmError) as caught:
        chart.render(given)
    assert message in str(caught.value)


def test_notes_tell_how_to_reach_it():
    notes = render_file("defaults")[chart.NOTES]
    assert "port-forward svc/shop-pvgate-gateway" in notes
    assert "pvgate token create --role ops" in notes
    assert "shop-pvgate-migrations" in notes
