"""The benchmark and the fuzz campaign are not run by the tests (they take minutes and the whole machine), but they
must still start: every module imports (bench.fuzz could not, after a file it imported moved, and nothing said so)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(bench.__path__, "bench."))


@pytest.mark.parametrize("module", MODULES)
def test_every_benchmark_module_imports(module):
    importlib.import_module(module)
