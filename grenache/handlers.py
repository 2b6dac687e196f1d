"""Load a request handler named ``pkg.module:function`` (the ``--handler`` of ``grenache serve``
and ``twistd grenache-service``).

The part after the colon may be a dotted path (``pkg.module:Service.handle`` for a static or
class method, ``pkg.module:instance.method`` for a bound one). As with ``uvicorn`` and
``gunicorn``, modules are imported with the current directory first on ``sys.path``, so
``--handler examples.fibonacci_service:fibonacci`` works from the repository root whichever way
the program was started.

A handler is called with one :class:`grenache.peer.Request` (``rid``, ``key``, ``payload``,
``peer_certificate``) and returns the reply's value, a Deferred or a coroutine; an exception
becomes the reply's error string, and the server logs it with its traceback (rate-limited,
see :class:`grenache.peer.PeerRPCServer`). Under the asyncio reactor (``--reactor asyncio``,
``twistd -r asyncio``) an ``async def`` handler runs as an asyncio Task and may await asyncio
libraries (docs/extending.rst).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from grenache.peer import Handler

__all__ = ["HandlerError", "load_handler"]


class HandlerError(ValueError):
    """``--handler`` does not name a callable; the message says what is wrong, on one line."""


def _import(module_name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise HandlerError(f"no module named {missing!r} (looked in {cwd} too)") from None
        raise HandlerError(f"importing {module_name!r} failed: {error}") from None
    except Exception as error:
        raise HandlerError(
            f"importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None


def load_handler(spec: str) -> Handler:
    """The callable that ``spec`` (``"pkg.module:attr[.attr...]"``) names.

    Raises :class:`HandlerError` when ``spec`` is malformed, the module cannot be imported
    (including an exception raised while importing it), an attribute is missing or the
    object is not callable.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerError(f"handler {spec!r} is not of the form pkg.module:function")
    target = _import(module_name)
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise HandlerError(f"{spec!r} is not callable (it is a {type(target).__name__})")
    return target  # type: ignore[no-any-return]
