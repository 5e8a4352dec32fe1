"""The modules compiled by mypyc, and whether the compiled ones run (docs/architecture.md §4).

The per-request code of the data plane — the engine, the policy and the Charger in
`gateway`, the Meter and its connection in `metering` — is compiled to C extensions when
pvgate is installed (setup.py reads `COMPILED` from this file without running it).  Should
a source be newer than its compiled module in a source checkout (an edit since the last
``make``), or a compiled module be missing, every one of them runs from its source instead, with a
warning: compiled modules call each other directly, so they are never mixed with sources.
Importing this module settles it, and `metering/__init__.py` imports it before anything
else; `build` tells which runs.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Literal

COMPILED = (
    "gateway/admission.py",
    "gateway/charging.py",
    "gateway/classify.py",
    "gateway/engine/exchange.py",
    "gateway/engine/framing.py",
    "gateway/engine/heads.py",
    "gateway/engine/limits.py",
    "gateway/engine/origin.py",
    "gateway/engine/relay.py",
    "gateway/engine/request.py",
    "gateway/engine/server.py",
    "gateway/engine/visitor.py",
    "gateway/metrics.py",
    "gateway/policy.py",
    "gateway/routing.py",
    "metering/deadline.py",
    "metering/keys.py",
    "metering/looplag.py",
    "metering/meter.py",
    "metering/metrics.py",
    "metering/pipe.py",
    "metering/replies.py",
    "metering/rounds.py",
    "metering/usage.py",
)
GROUP = "pvgate__mypyc"  # the library the compiled modules share
_ROOT = Path(__file__).resolve().parents[1]
_MODULES = {path.removesuffix(".py").replace("/", "."): _ROOT / path for path in COMPILED}


def _compiled(source: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = source.with_suffix(suffix)
        if path.exists():
            return path
    return None


def _why_sources() -> str | None:
    """Why the sources run: None when the compiled modules do, "" when none were built."""
    found = {name: _compiled(source) for name, source in _MODULES.items()}
    if not any(found.values()):
        return ""  # built without them (PVGATE_COMPILE=0, or no compiler)
    # In a source checkout (an editable install: setup.py beside the packages) a source
    # may have been edited since it was compiled.  An installed wheel was built in one go,
    # and its files' times are those of the installation, in no particular order.
    checkout = (_ROOT / "setup.py").exists()
    stale = [
        str(_MODULES[name].relative_to(_ROOT))
        for name, path in found.items()
        if checkout and path is not None and path.stat().st_mtime < _MODULES[name].stat().st_mtime
    ]
    if stale:
        return f"{', '.join(stale)} changed since compiled"
    missing = [name for name, path in found.items() if path is None]
    if missing or importlib.util.find_spec(GROUP) is None:
        return f"the compiled modules are incomplete ({', '.join(missing) or GROUP} missing)"
    return None


class _Sources:
    """Finds the compiled modules' sources, ahead of their compiled files."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        source = _MODULES.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


_why: str | None = None


def settle() -> None:
    """Choose, once, before any compiled module is imported: compiled modules or sources."""
    global _why
    if any(finder.__class__ is _Sources for finder in sys.meta_path):
        return
    _why = _why_sources()
    if _why is not None:
        sys.meta_path.insert(0, _Sources())
    if _why:
        logging.getLogger("pvgate").warning(
            "the data plane runs from its sources: %s (make test, make demo or "
            "pip install -e . compiles it again)",
            _why,
        )


def build() -> Literal["compiled", "source"]:
    """Whether the compiled modules run, or their sources."""
    return "source" if _why is not None else "compiled"


settle()
