"""The API reference (docs/api/) covers every public module, and every public class, function
and method has a docstring for it to show.

autodoc documents only what has a docstring (``undoc-members`` is off), so an object without
one is missing from the site: this module is what keeps the reference complete, without a
Sphinx build in the suite (``tox -e docs`` builds it).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import TestCase

import grenache

API = Path(__file__).resolve().parent.parent / "docs" / "api"


def is_private(dotted: str) -> bool:
    """A name any of whose parts starts with an underscore (``__main__`` included)."""
    return any(part.startswith("_") for part in dotted.split("."))


def public_modules() -> list[str]:
    """Every importable module of the ``grenache`` package whose dotted name is public."""
    names = ["grenache"]
    for info in pkgutil.walk_packages(grenache.__path__, "grenache."):
        if not is_private(info.name):
            names.append(info.name)
    return sorted(names)


def documented_modules() -> dict[str, str]:
    """``{module: page}`` for every ``automodule`` directive of docs/api/."""
    found = {}
    for page in sorted(API.glob("*.rst")):
        for name in re.findall(r"^\.\. automodule:: (\S+)$", page.read_text(), re.MULTILINE):
            found[name] = page.name
    return found


def public_names(module: types.ModuleType) -> list[str]:
    """Names ``module`` offers: its ``__all__`` and every public name it defines itself."""
    names = list(getattr(module, "__all__", []))
    for name, value in vars(module).items():
        if name.startswith("_") or name in names:
            continue
        if getattr(value, "__module__", None) == module.__name__:
            names.append(name)
    return names


def _own_members(cls: type) -> Iterator[tuple[str, object]]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property) or inspect.isclass(value):
            yield name, value


def undocumented(module: types.ModuleType) -> list[str]:
    """The public classes, functions and methods of ``module`` that have no docstring.

    Each is checked where it is defined (a name re-exported from another module of the
    package is that module's business). A method inherits the docstring of the method it
    overrides, as autodoc shows it (``inspect.getdoc``).
    """
    missing = []
    for name in public_names(module):
        value = getattr(module, name, None)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if value.__module__ != module.__name__:
            continue
        if not inspect.getdoc(value):
            missing.append(f"{module.__name__}.{name}")
        if not inspect.isclass(value):
            continue
        classes = [(f"{module.__name__}.{name}", value)]
        while classes:
            path, cls = classes.pop()
            for member, attr in _own_members(cls):
                if inspect.isclass(attr):
                    # A class defined in the body (not one a class attribute refers to).
                    if attr.__qualname__ == f"{cls.__qualname__}.{member}":
                        classes.append((f"{path}.{member}", attr))
                        if not inspect.getdoc(attr):
                            missing.append(f"{path}.{member}")
                    continue
                if isinstance(attr, property):
                    doc = attr.__doc__
                else:
                    doc = inspect.getdoc(getattr(cls, member))
                if not doc:
                    missing.append(f"{path}.{member}")
    return missing


class ReferenceCoversModulesTests(TestCase):
    def test_every_public_module_has_an_automodule(self) -> None:
        modules = public_modules()
        self.assertIn("grenache.peer.client", modules)
        self.assertNotIn("grenache.cli.__main__", modules)
        documented = documented_modules()
        self.assertEqual([m for m in modules if m not in documented], [])

    def test_every_automodule_names_a_public_module(self) -> None:
        modules = set(public_modules())
        stale = {name: page for name, page in documented_modules().items() if name not in modules}
        self.assertEqual(stale, {})

    def test_every_page_is_in_the_api_toctree(self) -> None:
        index = (API / "index.rst").read_text()
        listed = set(re.findall(r"^   (\S+)$", index, re.MULTILINE))
        pages = {page.stem for page in API.glob("*.rst")} - {"index"}
        self.assertEqual(pages - listed, set())


class DocstringTests(TestCase):
    def test_every_public_object_has_a_docstring(self) -> None:
        missing = []
        for name in public_modules():
            module = importlib.import_module(name)
            if not inspect.getdoc(module):
                missing.append(name)
            missing.extend(undocumented(module))
        self.assertEqual(missing, [])

    def test_the_check_finds_what_is_missing(self) -> None:
        module = types.ModuleType("grenache_example", "A module.")

        class Documented:
            """A class."""

            def method(self) -> None:
                """A method."""

            def bare(self) -> None:
                pass

            def _private(self) -> None:
                pass

            @property
            def value(self) -> int:
                return 1

        def function() -> None:
            pass

        def _helper() -> None:
            pass

        for obj in (Documented, function, _helper):
            obj.__module__ = module.__name__
            setattr(module, obj.__name__, obj)
        self.assertEqual(
            sorted(undocumented(module)),
            [
                "grenache_example.Documented.bare",
                "grenache_example.Documented.value",
                "grenache_example.function",
            ],
        )
