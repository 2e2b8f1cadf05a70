"""Every ops_native module imports alone in a fresh interpreter: no import cycle inside the package."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import ops_native

MODULES = sorted(m.name for m in pkgutil.walk_packages(ops_native.__path__, "ops_native."))


def test_the_package_has_the_documented_modules() -> None:
    assert {"ops_native.compiler", "ops_native.loader", "ops_native.memory", "ops_native.steps", "ops_native.errors",
            "ops_native.passes.fusions", "ops_native.passes.layout", "ops_native.passes.folding",
            "ops_native.ops.registry", "ops_native.ops.conv"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
