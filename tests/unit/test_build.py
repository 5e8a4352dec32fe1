"""The build: the data plane's per-request modules compiled by mypyc (setup.py reads their
list from metering/build.py), and their sources run instead — all of them, with a warning —
where a source is newer than its compiled module or one is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metering import build

ROOT = Path(__file__).resolve().parents[2]
BUILT = any((ROOT / "gateway" / "engine").glob("visitor.*.so"))
SKIP_UNBUILT = pytest.mark.skipif(
    not BUILT, reason="nothing is compiled here (built with PVGATE_COMPILE=0, or no compiler)"
)


def test_setup_compiles_the_modules_build_names():
    namespace: dict[str, object] = {
        "__name__": "setup_under_test",
        "__file__": str(ROOT / "setup.py"),
    }
    source = (ROOT / "setup.py").read_text().replace("setup(ext_modules=ext_modules())", "")
    exec(compile(source, "setup.py", "exec"), namespace)
    assert namespace["compiled_modules"]() == list(build.COMPILED)  # type: ignore[operator]
    assert all((ROOT / path).exists() for path in build.COMPILED)


@SKIP_UNBUILT
def test_the_compiled_modules_are_what_runs():
    import gateway.engine.visitor
    import gateway.policy
    import metering.meter

    assert build.build() == "compiled"
    for module in (gateway.engine.visitor, gateway.policy, metering.meter):
        assert module.__file__ is not None
        assert module.__file__.endswith(".so")


def copy_of_the_build(tmp_path: Path, *, checkout: bool) -> Path:
    """The packages with their compiled modules, as a source checkout (setup.py beside
    them) or as an installed wheel; the engine's directory."""
    for package in ("gateway", "metering"):
        shutil.copytree(ROOT / package, tmp_path / package, copy_function=shutil.copy2)
    for group in ROOT.glob(f"{build.GROUP}*.so"):
        shutil.copy2(group, tmp_path / group.name)
    if checkout:
        shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    return tmp_path / "gateway" / "engine"


def run_in(tmp_path: Path) -> tuple[list[str], str]:
    code = (
        "import metering.build as b, gateway.engine.exchange as x, metering.meter as m;"
        "print(b.build(), x.__file__.endswith('.py'), m.__file__.endswith('.py'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    return done.stdout.split(), done.stderr


def newer(path: Path) -> None:
    later = max(p.stat().st_mtime for p in path.parent.iterdir()) + 60
    os.utime(path, (later, later))


@SKIP_UNBUILT
@pytest.mark.parametrize(
    ("change", "warning"),
    [
        ("edit heads.py", "gateway/engine/heads.py changed since compiled"),
        ("lose visitor's compiled module", "incomplete (gateway.engine.visitor missing)"),
    ],
)
def test_the_sources_run_all_together_where_the_build_is_outdated_or_incomplete(
    tmp_path: Path, change: str, warning: str
):
    engine = copy_of_the_build(tmp_path, checkout=True)
    if change.startswith("edit"):
        newer(engine / "heads.py")
    else:
        for compiled in engine.glob("visitor.*.so"):
            compiled.unlink()
    ran, log = run_in(tmp_path)
    assert ran == ["source", "True", "True"]  # every module, never a mix
    assert warning in log


@SKIP_UNBUILT
def test_an_installed_wheel_runs_compiled_whatever_its_files_times(tmp_path: Path):
    """pip writes a wheel's files in its own order: a source may be a little newer than its
    compiled module there, and that is no edit."""
    engine = copy_of_the_build(tmp_path, checkout=False)
    newer(engine / "heads.py")
    ran, log = run_in(tmp_path)
    assert ran == ["compiled", "False", "False"]
    assert "sources" not in log
