"""A BEP 44 item as the link's ``get`` returns it."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Item"]


@attrs.frozen
class Item:
    """A BEP 44 item as a grape's ``get`` answers it (docs/protocol.rst, *BEP 44 items*).

    ``id`` is the hex node id of the DHT node that answered, ``token`` its hex write token (None
    when the grape served the item from its own store). Mutable items also have the hex public
    key ``k``, the hex signature ``sig`` and the sequence number ``seq``; ``salt`` is echoed
    when the item came from a remote node and the request had one.
    """

    v: str
    id: str
    token: str | None
    k: str | None = None
    sig: str | None = None
    seq: int | None = None
    salt: str | None = None

    @property
    def mutable(self) -> bool:
        """True for a mutable (signed) item."""
        return self.k is not None

    @classmethod
    def from_json(cls, result: dict[str, Any]) -> Item:
        """Build an item from a get result; raises ``ValueError`` on a malformed one."""

        def text(name: str, optional: bool) -> str | None:
            value = result.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise ValueError(f"{name} is {value!r}")
            return value

        seq = result.get("seq")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            raise ValueError(f"seq is {seq!r}")
        v = text("v", False)
        node_id = text("id", False)
        assert v is not None and node_id is not None
        return cls(
            v=v,
            id=node_id,
            token=text("token", True),
            k=text("k", True),
            sig=text("sig", True),
            seq=seq,
            salt=text("salt", True),
        )
