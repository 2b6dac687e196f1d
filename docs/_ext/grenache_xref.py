"""Cross-references of the API reference that Sphinx cannot resolve by itself, resolved here.

``sphinx-build -n`` wants every reference resolved. Three kinds are not, out of the box:

- Names a docstring or an annotation uses as its module imports them: ``:class:`KRPCError```
  in :mod:`grenache.dht.krpc` (defined in :mod:`grenache.errors`), ``grenache.peer.Request``
  (re-exported; defined in :mod:`grenache.peer.request`), ``IReactorTime``. Each is resolved
  by importing it from the module that uses it and following it to where it is defined (its
  ``__module__`` and ``__qualname__``), then through the Python domain or intersphinx, trying
  the public spelling of a private path too (``twisted.logger._logger.Logger`` is documented as
  ``twisted.logger.Logger``).
- Annotations naming zope interfaces, which autodoc writes as ``<InterfaceClass ...>``: the
  signature is rewritten to the interface's dotted name first.
- What has no page anywhere: private names (``_Down``), type variables, attributes of a class
  that are not documented one by one (linked to their class), and the libraries without an
  inventory in ``_inventories/`` (:data:`NO_INVENTORY`). These become plain text.

Anything else unresolved stays a warning (and fails ``tox -e docs``): a typo, a renamed
object, or a public object without a docstring.
"""

from __future__ import annotations

import importlib
import re
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


def clean_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None]:
    """``<InterfaceClass twisted.x.IFoo>`` in a signature becomes ``~twisted.x.IFoo``."""

    def clean(text: str | None) -> str | None:
        return None if text is None else _INTERFACE.sub(r"~\1", text)

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


def _defined_name(obj: Any, fallback: str) -> str:
    """Where ``obj`` is defined, as a dotted name (``fallback`` when it does not say)."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<locals>" not in qualname:
        return f"{module}.{qualname}"
    return fallback


def _candidates(target: str, module: str | None, klass: str | None) -> list[tuple[str, Any]]:
    """Dotted names ``target`` may stand for, each with the object (``None`` if unknown)."""
    found: list[tuple[str, Any]] = []
    scopes = [target]
    if module:
        if klass:
            scopes.append(f"{module}.{klass}.{target}")
        scopes.append(f"{module}.{target}")
    for dotted in scopes:
        head, _, rest = dotted.rpartition(".")
        try:
            obj = _import(dotted)
        except (LookupError, AttributeError, ImportError):
            # An attribute that exists only on instances: try its class.
            if head:
                try:
                    owner = _import(head)
                except (LookupError, AttributeError, ImportError):
                    continue
                if isinstance(owner, type):
                    found.append((f"{_defined_name(owner, head)}.{rest}", None))
                    found.append((_defined_name(owner, head), owner))
            continue
        name = _defined_name(obj, dotted)
        owner = None
        if not (callable(obj) or isinstance(obj, ModuleType)) and head:
            # Data: its name is where it was found, in the module that defines its owner.
            try:
                owner = _import(head)
                name = f"{_defined_name(owner, head)}.{rest}"
            except (LookupError, AttributeError, ImportError):
                name = dotted
        found.append((name, obj))
        if name != dotted:
            found.append((dotted, obj))
        if isinstance(owner, type):
            # An attribute not documented on its own (an attrs field): its class.
            found.append((_defined_name(owner, head), owner))
    return found


def _public_spelling(dotted: str) -> str:
    """``a._b.C`` -> ``a.C``: where a package that re-exports a private module documents it."""
    parts = dotted.split(".")
    public = [p for p in parts[:-1] if not p.startswith("_")] + parts[-1:]
    return ".".join(public)


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
    match = _INTERFACE.search(target)
    if match:
        target = _INTERFACE.sub(r"\1", target)
        display = _INTERFACE.sub(lambda m: m.group(1).rpartition(".")[2], contnode.astext())
    if " | " in target or "[" in target:
        # A whole annotation as one target (a type alias' value): no single page for it.
        return _text(contnode, display)
    domain = env.get_domain("py")
    typ = node["reftype"]
    tried: list[str] = []
    plain = False
    for name, obj in _candidates(target, node.get("py:module"), node.get("py:class")):
        for dotted in dict.fromkeys((name, _public_spelling(name))):
            if dotted in tried:
                continue
            tried.append(dotted)
            for kind in (typ, "obj"):
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
        if (
            isinstance(obj, TypeVar)
            or any(part.startswith("_") for part in name.split("."))
            or name.split(".")[0] in NO_INVENTORY
        ):
            plain = True
    if plain or target.split(".")[-1].startswith("_"):
        return _text(contnode, display)
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", clean_signature)
    app.connect("missing-reference", resolve, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
