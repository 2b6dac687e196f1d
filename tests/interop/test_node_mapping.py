"""docs/node.rst names every option, event and command-line flag the Node packages read.

The names are taken from the installed packages' sources (tests/interop/harness.py installs
them): ``conf.X`` and ``opts.X`` reads, ``emit('X'`` events, and the grape's yargs options and
aliases. A name the page does not mention (as ``X``, ``--X``, ``conf.X``, ``opts.X`` or
``'X'``, in double backquotes) fails the test, so a package update that adds an option shows
up here.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial import unittest

from tests.interop import harness

PAGE = Path(__file__).resolve().parents[2] / "docs" / "node.rst"
PACKAGES = (
    "grenache-grape",
    "grenache-nodejs-link",
    "grenache-nodejs-base",
    "grenache-nodejs-http",
    "grenache-nodejs-ws",
)
#: Reads that are no option of the user's: the transport's own destination and fetch
#: arguments, and the BEP 44 fields of a put or get (the put and get rows cover them).
INTERNAL = {"dest", "agent", "url", "hash", "k", "sig", "salt"}
_NAMES = re.compile(
    r"\b_?(?:conf|opts)\.(\w+)"
    r"|emit\(\s*'([\w-]+)'"
    r"|\.option\('(\w+)'"
    r"|alias: '(\w+)'"
)


def node_names(modules: Path) -> dict[str, set[str]]:
    """Each package's option, event and flag names."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        names: set[str] = set()
        root = modules / package
        for source in [*root.glob("*.js"), *root.glob("lib/*.js"), *root.glob("bin/*.js")]:
            for match in _NAMES.finditer(source.read_text()):
                names.add(next(group for group in match.groups() if group))
        found[package] = names - INTERNAL
    return found


def mentioned(name: str, text: str) -> bool:
    forms = (name, f"--{name}", f"-{name}", f"conf.{name}", f"opts.{name}", f"'{name}'")
    return any(f"``{form}``" in text for form in forms)


class NodeMappingPageTests(unittest.TestCase):
    def test_every_node_name_is_mapped(self) -> None:
        found = node_names(harness.node_modules_dir())
        self.assertIn("maxActiveKeyDests", found["grenache-nodejs-base"])
        self.assertIn("request", found["grenache-nodejs-http"])
        self.assertIn("dht_peer_maxAge", found["grenache-grape"])
        text = PAGE.read_text()
        missing = {
            package: sorted(n for n in names if not mentioned(n, text))
            for package, names in found.items()
        }
        self.assertEqual({p: n for p, n in missing.items() if n}, {})

    def test_an_unmapped_name_is_reported(self) -> None:
        self.assertTrue(mentioned("maxActiveKeyDests", "``conf.maxActiveKeyDests``"))
        self.assertFalse(mentioned("maxActiveKeyDests", "maxActiveKeyDests"))
        self.assertFalse(mentioned("retry", "``opts.retryCount``"))
