"""pyproject's dependencies match the code: module-level imports are core dependencies, optional
ones are imported lazily, and the environment the tests run in satisfies every pin."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CORE = {Requirement(r).name.lower(): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported at module level (not inside functions, not TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_module_level_imports_are_core_dependencies():
    dists = packages_distributions()
    missing = []
    for path in sorted((REPO / "src" / "ssr").rglob("*.py")):
        for name in _module_level_imports(path):
            if name in sys.stdlib_module_names or name in ("ssr", "__future__"):
                continue
            declared = [d for d in dists.get(name, [name]) if d.lower() in CORE]
            if not declared:
                missing.append(f"{path.relative_to(REPO)}: {name} ({dists.get(name)})")
    assert not missing, "imported at module level but not a core dependency:\n" + "\n".join(missing)


def test_optional_packages_are_extras_not_core():
    for extra, package in [
        ("wandb", "wandb"),
        ("slurm", "hydra-submitit-launcher"),
        ("report", "matplotlib"),
    ]:
        assert package not in CORE
        assert any(Requirement(r).name == package for r in EXTRAS[extra])
    dev = {Requirement(r).name: Requirement(r) for r in EXTRAS["dev"]}
    assert {"wandb", "slurm", "report"} <= dev["ssr"].extras  # setup.sh's .[dev] keeps the tests whole


def test_installed_versions_satisfy_the_pins():
    wrong = []
    for name, req in CORE.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name}: not installed")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            wrong.append(f"{name} {installed} outside {req.specifier}")
    assert not wrong, wrong
