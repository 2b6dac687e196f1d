"""Sphinx configuration of the grenache documentation site.

Built by ``tox -e docs`` (``sphinx-build -W --keep-going -n``: warnings are errors and every
cross-reference must resolve) and by Read the Docs (``.readthedocs.yaml``). The build needs no
network: the intersphinx inventories of Python and Twisted are files in ``_inventories/``
(``_inventories/README.rst`` says how to refresh them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "_ext")]

import grenache  # noqa: E402 (needs the path above when the package is not installed)

project = "grenache"
author = "grenache contributors"
copyright = "grenache contributors"
release = grenache.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "grenache_xref",
]

root_doc = "index"
exclude_patterns = ["_build", "_inventories", "api/README.rst"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"grenache {release}"
# Code blocks introduced with ``::`` are shell commands as often as Python: no guessing.
highlight_language = "none"
# Every cross-reference must resolve, also where the build runs without -n (Read the Docs).
nitpicky = True

# --- the API reference ------------------------------------------------------------------

autodoc_default_options = {
    "ignore-module-all": True,
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Shown by name (and linked), not expanded into a union naming a zope interface.
autodoc_type_aliases = {"ListenSpec": "grenache.endpoints.ListenSpec"}
autoclass_content = "both"

# --- links to Python's and Twisted's documentation, from local inventories --------------

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(HERE / "_inventories" / "python.inv")),
    "twisted": (
        "https://docs.twistedmatrix.com/en/stable/api",
        str(HERE / "_inventories" / "twisted.inv"),
    ),
}


def skip_loggers(
    app: object, what: str, name: str, obj: object, skip: bool, options: object
) -> bool | None:
    """Module-level ``log = Logger()`` objects are no API: never in the reference."""
    from twisted.logger import Logger

    return True if isinstance(obj, Logger) else None


def setup(app: Any) -> None:
    app.connect("autodoc-skip-member", skip_loggers)
