"""Rendering the Helm chart offline with Helm's own Go SDK (``helm-python-sdk``).

No helm binary and no cluster: `render` runs the chart's templates the way ``helm
template`` does, `objects` parses what came out, `snapshot` prints it as ``helm template``
would (the golden file's format).  `render` can also say which API versions the "cluster"
serves (``helm template --api-versions``): helm-python-sdk 0.2 does not expose that option
in ``Chart.render``, but the library's ``helm_render`` call accepts it, so it is passed
there directly.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import helm_python
import yaml  # type: ignore[import-untyped]
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "pvgate"
VALUES_DIR = Path(__file__).resolve().parent / "values"
GOLDEN = Path(__file__).resolve().parent / "golden" / "default.yaml"
RELEASE = "shop"
NAMESPACE = "pvgate"
# Every values file under values/: each is rendered, linted and validated.
VALUES_FILES = sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))
NOTES = "pvgate/templates/NOTES.txt"


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


@functools.cache
def _values_text(name: str) -> str:
    return (VALUES_DIR / f"{name}.yaml").read_text()


def values(name: str) -> dict[str, Any]:
    """The values file ``values/<name>.yaml`` (a fresh copy each time)."""
    loaded = yaml.safe_load(_values_text(name)) or {}
    assert isinstance(loaded, dict)
    return loaded


def merged(name: str) -> dict[str, Any]:
    """The values a release of ``values/<name>.yaml`` sees: the chart's defaults under them."""
    return chart().merge_values(values(name))


def render(
    user_values: dict[str, Any], *, api_versions: Sequence[str] = (), kube_version: str = ""
) -> dict[str, str]:
    """Template path → rendered text (NOTES.txt included), as ``helm template`` would."""
    opts: dict[str, Any] = {"name": RELEASE, "namespace": NAMESPACE}
    if api_versions:
        opts["api_versions"] = list(api_versions)
    if kube_version:
        opts["kube_version"] = kube_version
    if not api_versions and not kube_version:
        return chart().render(user_values, name=RELEASE, namespace=NAMESPACE)
    rendered = _native.call_string(
        "helm_render", chart()._raw(), json.dumps(user_values), json.dumps(opts)
    )
    manifests: dict[str, str] = json.loads(rendered)
    return manifests


@functools.cache
def render_file(name: str) -> dict[str, str]:
    """`render` of ``values/<name>.yaml``, cached for the session."""
    return render(values(name))


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object rendered (NOTES.txt and empty documents left out)."""
    found: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path == NOTES:
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                assert isinstance(doc, dict), f"{path}: not an object: {doc!r}"
                found.append(doc)
    return found


def snapshot(rendered: dict[str, str]) -> str:
    """The rendered manifests as one YAML stream, each after its ``# Source:`` line."""
    parts = []
    for path in sorted(rendered):
        text = rendered[path].strip()
        if path == NOTES or not text:
            continue
        parts.append(f"---\n# Source: {path}\n{text}\n")
    return "".join(parts)


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise AssertionError(
        f"no {kind} {name} among {[(o['kind'], o['metadata']['name']) for o in objs]}"
    )


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod template) for each Deployment and Job."""
    for o in objs:
        if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield o, o["spec"]["template"]


def containers(
    objs: list[dict[str, Any]],
) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, container) for every container and init container."""
    for workload, template in pod_specs(objs):
        spec = template["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, spec, container


def hook(obj: dict[str, Any]) -> tuple[set[str], int] | None:
    """A hook object's events and weight; None for a regular object."""
    annotations = obj["metadata"].get("annotations") or {}
    if "helm.sh/hook" not in annotations:
        return None
    events = {e.strip() for e in annotations["helm.sh/hook"].split(",")}
    return events, int(annotations.get("helm.sh/hook-weight", "0"))


def lint(user_values: dict[str, Any], kube_version: str) -> dict[str, Any]:
    return helm_python.lint(CHART_DIR, user_values, strict=True, kube_version=kube_version)
