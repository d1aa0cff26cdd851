"""Sphinx configuration: ``tox -e docs`` builds docs/ to docs/_build/html, warnings as errors."""

from __future__ import annotations

import appconfig_cache

project = "appconfig-cache"
author = "the appconfig-cache authors"
copyright = "the appconfig-cache authors"
release = appconfig_cache.__version__
version = release

extensions = ["sphinx.ext.autodoc"]

# The API reference (api.rst) documents exactly the names of appconfig_cache.__all__.
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]

# Broken cross-references are errors too, except those autodoc makes from type hints
# that name the standard library, dependencies (no intersphinx: the build stays offline)
# or private modules of this package.
nitpicky = True
nitpick_ignore_regex = [
    ("py:(class|obj)", r"(uuid|datetime|enum|logging|collections\.abc|typing|random)\..*"),
    ("py:(class|obj)", r"(pydantic|sqlalchemy|prometheus_client)\..*"),
    # autodoc splits a dataclass field's "dict[str, int]" at the comma
    ("py:class", r"dict\[str"),
    ("py:(class|obj)", r"appconfig_cache\.(types|tiered|repositories|logs|outbox)\..*"),
]
