"""The container image: the Dockerfile's shape, and — where a Docker daemon answers — a real
build of both targets that runs ``pvgate --help`` in them.

The static checks always run: multi-stage, slim Python 3.11, wheels built in a stage of
their own, no compiler installed in a stage that is shipped, a numeric non-root USER,
``pvgate`` as the entrypoint, the gateway target installing ``pvgate[gateway]`` only.
The build needs a Docker daemon (and the network, for the base image and PyPI); without one
it is skipped, saying why.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

import pytest

from tests.deploy.chart import ROOT

DOCKERFILE = ROOT / "Dockerfile"
SHIPPED = ("gateway", "full")
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake)\b")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name, each with its instructions (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = Stage(match.group(2), match.group(1))
            found[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, " ".join(args.split())))
    return found


def lineage(name: str, found: dict[str, Stage]) -> list[Stage]:
    """The stage and the stages it is built on, nearest first."""
    chain = [found[name]]
    while chain[-1].base in found:
        chain.append(found[chain[-1].base])
    return chain


def test_the_dockerfile_is_multi_stage_on_slim_python_3_11():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    found = stages()
    assert {"build", *SHIPPED} <= set(found)
    assert list(found)[-1] == "full", "docker build without --target makes the full image"
    for name in SHIPPED:
        roots = {s.base for s in lineage(name, found)} - set(found)
        assert roots == {"${PYTHON_IMAGE}"}, name


def test_wheels_are_built_apart_and_no_shipped_stage_has_a_compiler():
    found = stages()
    build = found["build"]
    assert any("pip wheel" in run for run in build.all("RUN"))
    assert any(COMPILERS.search(run) for run in build.all("RUN"))
    for name in SHIPPED:
        for stage in lineage(name, found):
            for run in stage.all("RUN"):
                assert not COMPILERS.search(run), f"{stage.name}: {run}"
            assert not stage.all("COPY"), f"{stage.name} takes only wheels from the build stage"


def test_the_images_run_pvgate_as_a_non_root_user():
    found = stages()
    for name in SHIPPED:
        stage = found[name]
        (user,) = stage.all("USER")
        uid = user.split(":")[0]
        assert uid.isdigit(), "numeric, so runAsNonRoot can check it"
        assert int(uid) != 0
        assert stage.all("ENTRYPOINT") == ['["pvgate"]']


def test_the_gateway_image_has_no_billing_extras():
    found = stages()
    gateway = " ".join(found["gateway"].all("RUN"))
    assert '"pvgate[gateway]"' in gateway
    assert "[all]" not in gateway
    assert "billing" not in gateway
    assert '"pvgate[all]"' in " ".join(found["full"].all("RUN"))


def test_the_build_context_leaves_out_what_the_image_does_not_need():
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "everything is left out unless named"
    kept = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert kept == {
        "pyproject.toml",
        "setup.py",
        "README.md",
        "metering",
        "gateway",
        "billing",
        "pvgate",
    }
    copied = {
        src
        for stage in stages().values()
        for args in stage.all("COPY")
        if "--from" not in args
        for src in args.split()[:-1]
    }
    assert copied <= kept


def docker_daemon() -> str | None:
    """None when a Docker daemon answers; else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client on PATH"
    try:
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "docker info did not answer in 20 s"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines() or ["(no output)"]
        return f"no Docker daemon reachable: {lines[-1]}"
    return None


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("target", SHIPPED)
def test_the_image_builds_and_runs_pvgate_help(target):
    why = docker_daemon()
    if why is not None:
        pytest.skip(f"image build: {why}")
    tag = f"pvgate-test:{target}-{uuid.uuid4().hex[:8]}"
    built = run("docker", "build", "--target", target, "-t", tag, str(ROOT), timeout=3000)
    assert built.returncode == 0, built.stderr[-4000:]
    try:
        helped = run("docker", "run", "--rm", tag, "--help")
        assert helped.returncode == 0, helped.stderr
        assert "gateway" in helped.stdout
        assert "migrate" in helped.stdout
        uid = run("docker", "run", "--rm", "--entrypoint", "id", tag, "-u")
        assert uid.stdout.strip() == "10001"
        compilers = run("docker", "run", "--rm", "--entrypoint", "sh", tag, "-c",
                        "command -v gcc cc g++ clang make")  # fmt: skip
        assert compilers.stdout.strip() == "", compilers.stdout
        billing = run("docker", "run", "--rm", "--entrypoint", "python", tag, "-c",
                      "import sqlalchemy, alembic, asyncpg")  # fmt: skip
        assert (billing.returncode == 0) == (target == "full"), billing.stderr
        gateway = run("docker", "run", "--rm", "--entrypoint", "python", tag, "-c",
                      "import uvloop, httptools, gateway.server")  # fmt: skip
        assert gateway.returncode == 0, gateway.stderr
        built_as = run("docker", "run", "--rm", "--entrypoint", "python", tag, "-c",
                       "import metering.build as b; print(b.build())")  # fmt: skip
        assert built_as.stdout.strip() == "compiled", built_as.stderr  # mypyc, setup.py
    finally:
        run("docker", "image", "rm", "--force", tag)
