"""A plain grape loads no library it does not use (issue: a grape's memory footprint).

``twistd grape`` with default options needs no WebSocket library (autobahn), no metrics
library (prometheus_client), no ZeroMQ and no ed25519 implementation (cryptography) until a
feature asks for one: a WebSocket API, ``--metrics``, a mutable BEP 44 item. Each check runs
in a fresh interpreter, since this test process has imported everything already.

Twisted itself imports pyOpenSSL (and so cryptography) whenever it is installed, to offer
TLS; ``twistd grape`` keeps it out when the grape serves no TLS and no WebSocket API
(grenache/tls_free.py), and loads it when it does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.trial import unittest

from tests.support import make_pki, write_identity

HEAVY = ("autobahn", "cryptography", "prometheus_client", "zmq", "txzmq", "OpenSSL")

PROGRAM = textwrap.dedent(
    """
    import json, sys

    class Unimportable:
        "Refuses the packages named on the command line, as if not installed."
        def __init__(self, names):
            self.names = set(names)
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.names:
                raise ImportError(f"{name} is not installed (test)")
            return None

    conf = json.loads(sys.argv[1])
    sys.meta_path.insert(0, Unimportable(conf["block"]))
    from grenache.grape.tap import Options, makeService
    options = Options()
    options.parseOptions(conf["argv"])
    makeService(options)
    if conf.get("mutable"):
        from grenache.dht import bep44
        seed = bep44.generate_private_key()
        assert bep44.verify(bep44.sign(seed, b"m"), b"m", bep44.public_key_of(seed))
    names = {m.split(".")[0] for m, module in sys.modules.items() if module is not None}
    print(json.dumps(sorted(names & set(conf["heavy"]))))
    """
)


def loaded(argv: list[str], block: tuple[str, ...] = (), mutable: bool = False) -> list[str]:
    """The heavy packages loaded by ``makeService`` for ``twistd grape ARGV`` in a fresh
    interpreter, with the ``block`` packages unimportable."""
    conf = json.dumps({"argv": argv, "block": list(block), "mutable": mutable, "heavy": HEAVY})
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, conf], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"the grape program failed:\n{done.stderr[-3000:]}")
    result: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class PlainGrapeImportsTests(unittest.TestCase):
    """What ``makeService`` imports for a grape, in a clean ``sys.modules``."""

    def test_plain_grape_needs_no_optional_library(self) -> None:
        """Default options, everything importable: the grape loads no pyOpenSSL, no
        cryptography, no autobahn, prometheus_client or ZeroMQ."""
        self.assertEqual(loaded([]), [])

    def test_plain_grape_without_tls_libraries(self) -> None:
        """A machine without pyOpenSSL and cryptography runs a plain grape."""
        self.assertEqual(loaded([], block=("OpenSSL", "cryptography")), [])

    def test_tls_api_loads_twisted_tls(self) -> None:
        """``--aph ssl:...`` asks for TLS: pyOpenSSL is loaded (and the port checked with it)."""
        pki = make_pki()
        directory = Path(self.mktemp())
        directory.mkdir()
        cert, key = write_identity(pki.server, directory, "grape")
        self.assertIn(
            "OpenSSL",
            loaded(["--aph", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"]),
        )

    def test_websocket_api_loads_autobahn(self) -> None:
        """``--apw`` asks for the WebSocket API: autobahn is loaded (and only then), and
        pyOpenSSL with it (the WebSocket transport checks certificates with it)."""
        self.assertTrue({"autobahn", "OpenSSL"} <= set(loaded(["--apw", "0"])))

    def test_metrics_loads_prometheus_client(self) -> None:
        """``--metrics`` loads prometheus_client."""
        self.assertIn("prometheus_client", loaded(["--metrics", "0"], block=("OpenSSL",)))

    def test_mutable_items_load_cryptography(self) -> None:
        """Signing and checking a mutable item imports the ed25519 implementation on use."""
        self.assertIn("cryptography", loaded([], block=("OpenSSL",), mutable=True))
