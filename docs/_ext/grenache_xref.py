"""Cross-references of the API reference that Sphinx cannot resolve by itself, resolved here.

``sphinx-build -n`` wants every reference resolved. Three kinds are not, out of the box:

- Names a docstring or an annotation uses as its module imports them: ``:class:`KRPCError```
  in :mod:`grenache.dht.krpc` (defined in :mod:`grenache.errors`), ``grenache.peer.Request``
  (re-exported; defined in :mod:`grenache.peer.request`), ``IReactorTime``. Each is resolved
  by importing it from the module that uses it and following it to where it is defined (its
  ``__module__`` and ``__qualname__``), then through the Python domain or intersphinx, trying
  the public spelling of a private path too (``twisted.logger._logger.Logger`` is documented as
  ``twisted.logger.Logger``).
- Annotations naming zope interfaces, which autodoc writes as ``<InterfaceClass ...>``, and
  type aliases in a union, which Sphinx 9 writes as ``TypeAliasForwardRef('...')``: the
  signature is rewritten to the dotted name first.
- What has no page anywhere: private names (``_Down``), type variables, attributes of a class
  that are not documented one by one (linked to their class), and the libraries without an
  inventory in ``_inventories/`` (:data:`NO_INVENTORY`). These become plain text.

Anything else unresolved stays a warning (and fails ``tox -e docs``): a typo, a renamed
object, or a public object without a docstring.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any, TypeVar

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.ext import intersphinx

#: Packages that have no inventory here: their names are shown, not linked.
NO_INVENTORY = (
    "autobahn",
    "txaio",
    "zope",
    "prometheus_client",
    "cryptography",
    "OpenSSL",
    "httptools",
    "attrs",
    "attr",
    "zmq",
    "txzmq",
    "msgpack",
)

_INTERFACE = re.compile(r"<InterfaceClass ([\w.]+)>")
# Sphinx 9 writes an ``autodoc_type_aliases`` alias inside a union as its repr.
_ALIAS = re.compile(r"TypeAliasForwardRef\('([\w.]+)'\)")


def clean_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None]:
    """``<InterfaceClass twisted.x.IFoo>`` in a signature becomes ``~twisted.x.IFoo``, and
    ``TypeAliasForwardRef('x.Alias')`` becomes ``~x.Alias``."""

    def clean(text: str | None) -> str | None:
        return None if text is None else _ALIAS.sub(r"~\1", _INTERFACE.sub(r"~\1", text))

    return clean(signature), clean(return_annotation)


def _import(dotted: str) -> Any:
    """The object a dotted name names, importing its longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(dotted)


def _spellings(module: str, qualname: str) -> list[str]:
    """Where ``module.qualname`` may be documented: there, then under each shorter public
    module path (``asyncio.events.AbstractEventLoop`` is documented as
    ``asyncio.AbstractEventLoop``, ``twisted.logger._logger.Logger`` as
    ``twisted.logger.Logger``)."""
    parts = module.split(".")
    names = [f"{module}.{qualname}"]
    public = [p for p in parts if not p.startswith("_")]
    for cut in range(len(public), 0, -1):
        names.append(".".join([*public[:cut], qualname]))
    return list(dict.fromkeys(names))


def _where_defined(obj: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` of a class, function or module, if it says."""
    if isinstance(obj, ModuleType):
        module, _, name = obj.__name__.rpartition(".")
        return module, name
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<locals>" not in qualname:
        return module, qualname
    return None


def _names_for(dotted: str) -> Iterator[tuple[str, Any]]:
    """The dotted names the object ``dotted`` names may be documented under, with the object
    (``None`` for an attribute that exists only on instances); the class of an attribute
    comes last, for attributes that are not documented one by one (attrs fields)."""
    head, _, rest = dotted.rpartition(".")
    try:
        obj = _import(dotted)
        found = True
    except (LookupError, AttributeError, ImportError):
        obj, found = None, False
    where = _where_defined(obj) if callable(obj) or isinstance(obj, ModuleType) else None
    if where is not None:
        for name in _spellings(*where):
            yield name, obj
        yield dotted, obj
        return
    if found:
        yield dotted, obj
    if not head:
        return
    try:
        owner = _import(head)
    except (LookupError, AttributeError, ImportError):
        return
    owner_at = _where_defined(owner) if isinstance(owner, type) else None
    if owner_at is not None:
        for name in _spellings(*owner_at):
            yield f"{name}.{rest}", obj
        for name in _spellings(*owner_at):
            yield name, owner


def _suffix_index(env: Any) -> dict[str, list[str]]:
    """Every documented Python object and every inventory entry, by its last name."""
    index = getattr(env, "_grenache_suffix_index", None)
    if index is None:
        index = {}
        names = set(env.get_domain("py").objects)
        for objtype, entries in getattr(env, "intersphinx_inventory", {}).items():
            if objtype.startswith("py:"):
                names.update(entries)
        for name in names:
            index.setdefault(name.rpartition(".")[2], []).append(name)
        env._grenache_suffix_index = index
    return index


def _scopes(env: Any, target: str, module: str | None, klass: str | None) -> list[str]:
    """What ``target``, written in ``module`` (and ``klass``), may stand for: itself, a name
    of that class or module, or (its first part being unique among documented objects and
    inventories) that object's name followed by the rest."""
    scopes = [target]
    if module:
        if klass:
            scopes.append(f"{module}.{klass}.{target}")
        scopes.append(f"{module}.{target}")
    first, _, rest = target.partition(".")
    matches = _suffix_index(env).get(first, [])
    if len(matches) == 1:
        scopes.append(f"{matches[0]}.{rest}" if rest else matches[0])
    return scopes


def _text(node: nodes.Element, text: str | None = None) -> nodes.Element:
    if text is None:
        return node
    literal = node.deepcopy()
    literal.children = [nodes.Text(text)]
    return literal


def resolve(app: Sphinx, env: Any, node: Any, contnode: nodes.Element) -> nodes.Element | None:
    """The ``missing-reference`` handler: see the module docstring."""
    if node.get("refdomain") != "py":
        return None
    target: str = node["reftarget"]
    display = None
    if _INTERFACE.search(target):
        target = _INTERFACE.sub(r"\1", target)
        display = _INTERFACE.sub(lambda m: m.group(1).rpartition(".")[2], contnode.astext())
    if " | " in target or "[" in target:
        # A whole annotation as one target (a type alias' value): no single page for it.
        return _text(contnode, display)
    domain = env.get_domain("py")
    tried: set[str] = set()
    plain = target.rpartition(".")[2].startswith("_")
    for scope in _scopes(env, target, node.get("py:module"), node.get("py:class")):
        for dotted, obj in _names_for(scope):
            if dotted in tried:
                continue
            tried.add(dotted)
            for kind in (node["reftype"], "obj"):
                found = domain.resolve_xref(
                    env, node["refdoc"], app.builder, kind, dotted, node, _text(contnode, display)
                )
                if found is not None:
                    return found
            external = node.deepcopy()
            external["reftarget"] = dotted
            found = intersphinx.missing_reference(app, env, external, _text(contnode, display))
            if found is not None:
                return found
            plain = plain or (
                isinstance(obj, TypeVar)
                or any(part.startswith("_") for part in dotted.split("."))
                or dotted.split(".")[0] in NO_INVENTORY
            )
    return _text(contnode, display) if plain else None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", clean_signature)
    app.connect("missing-reference", resolve, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
