"""The build: pyproject.toml says what pvgate is; this adds the compiled part.

The per-request code of the data plane (the modules `metering/build.py` lists in
``COMPILED``: the gateway's engine, policy and Charger, the Meter and its connection) is
compiled to C extensions with mypyc, from the same type-annotated sources ``make lint``
checks: the gateway serves about 1.5 times the page views per CPU second it serves as
plain Python (docs/architecture.md §4, measured by ``python -m benchmarks.proxy``).
``PVGATE_COMPILE=0`` builds pure Python; the sources also run wherever the compiled modules
are missing or older than their sources.  Compiling needs a C compiler and the Python
headers; where it fails, the build warns and goes on without the compiled modules.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from setuptools import setup


def compiled_modules() -> list[str]:
    """``COMPILED`` of metering/build.py, read without importing pvgate."""
    tree = ast.parse(Path(__file__).with_name("metering").joinpath("build.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("metering/build.py defines no COMPILED")


def ext_modules() -> list[Any]:
    if os.environ.get("PVGATE_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    # The types of the modules compiled are checked by `make lint` (mypy strict); here mypy
    # only reads them, without the project's configuration or the third-party stubs.
    flags = ["--config-file=", "--ignore-missing-imports", "--follow-imports=silent"]
    extensions = list(mypycify([*flags, *compiled_modules()], opt_level="3", group_name="pvgate"))
    for extension in extensions:
        extension.optional = True  # no compiler: a warning, and the sources run
    return extensions


setup(ext_modules=ext_modules())
