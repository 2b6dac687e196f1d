"""grenache.tls_free: which listening places need TLS, and when pyOpenSSL is kept out."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial import unittest

from grenache.tls_free import is_plain, keep_tls_out


class IsPlainTests(unittest.TestCase):
    def test_ports_and_plain_descriptions(self) -> None:
        for where in (None, 0, 30001, "30001", " 30001 ", "tcp:0", "TCP6:30001", "unix:/run/g"):
            self.assertTrue(is_plain(where), where)
        self.assertTrue(is_plain("systemd:domain=INET:index=0"))

    def test_tls_plugins_and_objects_are_not_plain(self) -> None:
        for where in ("ssl:443:privateKey=k.pem", "tls:443", "txsni:certs:tcp:443", "le:/x"):
            self.assertFalse(is_plain(where), where)
        self.assertFalse(is_plain("bogus"))
        self.assertFalse(is_plain(True))
        self.assertFalse(is_plain(TCP4ServerEndpoint(Clock(), 0)))


class KeepTLSOutTests(unittest.TestCase):
    def test_too_late_once_twisted_tcp_is_loaded(self) -> None:
        """This process runs a reactor: nothing is taken away from it."""
        self.assertIn("twisted.internet.tcp", sys.modules)
        hooks = list(sys.meta_path)
        self.assertFalse(keep_tls_out([0]))
        self.assertEqual(sys.meta_path, hooks)
        import OpenSSL  # still importable here

        self.assertTrue(OpenSSL.__name__)

    def run_fresh(self, places: list[object]) -> list[str]:
        program = textwrap.dedent(
            f"""
            import sys
            from grenache.tls_free import keep_tls_out
            print(keep_tls_out({places!r}))
            from twisted.internet import reactor, tcp
            print(sys.modules.get("OpenSSL") is not None)
            print("startTLS" in dir(tcp.Server))
            try:
                import OpenSSL
            except ImportError as error:
                print("refused" if "grenache.tls_free" in str(error) else repr(error))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        return done.stdout.split()

    def test_plain_process_runs_without_pyopenssl(self) -> None:
        self.assertEqual(self.run_fresh([0, "tcp:0", None]), ["True", "False", "False", "refused"])

    def test_a_tls_place_keeps_twisted_tls(self) -> None:
        self.assertEqual(self.run_fresh([0, "ssl:0"]), ["False", "True", "True"])
