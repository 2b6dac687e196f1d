"""Request handlers for benchmark services (``grenache serve ... --handler bench.handlers:echo``).

Kept in a module of their own, importing nothing, so that a service measured by
``bench/memory.py`` loads only what ``grenache serve`` itself loads.
"""

from __future__ import annotations

from typing import Any


def echo(request: Any) -> Any:
    """Answer every request with its payload (what the Node benchmark servers do)."""
    return request.payload
