"""The layers' import rules, checked on the source: arrows only run down.

``tiered/`` is the generic two-tier machinery: it imports nothing of app-config
(types, merge, validation, repositories). Nothing below a repository imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import appconfig_cache

PACKAGE = Path(appconfig_cache.__file__).parent


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports, as absolute ``appconfig_cache...`` names."""
    package = ["appconfig_cache", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_import_reader_sees_relative_imports() -> None:
    facade = PACKAGE / "repositories/app_config_fragment/cache_source/cache_source.py"
    found = _imports(facade)
    assert "appconfig_cache.types" in found and "appconfig_cache.tiered.local.MISS" in found


@pytest.mark.parametrize("path", sorted((PACKAGE / "tiered").glob("*.py")), ids=lambda p: p.name)
def test_tiered_imports_nothing_of_app_config(path: Path) -> None:
    app_config = ("types", "merge", "validation", "repositories", "models", "cli")
    bad = {
        name
        for name in _imports(path)
        for part in app_config
        if name == f"appconfig_cache.{part}" or name.startswith(f"appconfig_cache.{part}.")
    }
    assert not bad, f"{path.name} imports app-config code: {sorted(bad)}"


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "repositories").rglob("*.py")), ids=lambda p: p.name
)
def test_nothing_below_a_repository_imports_one(path: Path) -> None:
    face = path.name == "__init__.py" and (path.parent / "repository.py").exists()
    if path.name == "repository.py" or face or path.parent == PACKAGE / "repositories":
        return  # the repository itself, and the package face that re-exports it
    repositories = {name for name in _imports(path) if name.rsplit(".", 1)[-1] == "repository"}
    assert not repositories, f"{path} imports a repository: {sorted(repositories)}"
