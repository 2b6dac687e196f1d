"""The programs of docs/extending.rst, run as the page runs them (subprocesses, from the
repository root), and the page's includes."""

from __future__ import annotations

import re
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from examples.asyncio_service import shout
from examples.subclass_server import Counter
from grenache.peer import Request
from tests.test_cli import REPO, spawn

EXTENDING = REPO / "docs" / "extending.rst"


class FakeServerTransport:
    def __init__(self) -> None:
        self.serve: object = None

    def listen(self, where: object, serve: object) -> Deferred[int]:
        self.serve = serve
        d: Deferred[int] = Deferred()
        d.callback(1)
        return d

    def stop(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


class CounterTests(SynchronousTestCase):
    def test_handle_counts_and_checks(self) -> None:
        server = Counter(None, FakeServerTransport())
        self.assertEqual(
            server.handle(Request("r", "counter", {"name": "a"})), {"count": 1, "name": "a"}
        )
        self.assertEqual(
            server.handle(Request("r", "counter", {"name": "b"})), {"count": 2, "name": "b"}
        )
        self.assertRaises(ValueError, server.handle, Request("r", "counter", None))


class ExtendingExamplesTests(TestCase):
    timeout = 120

    async def run_example(self, script: str) -> str:
        result = await spawn(self, (sys.executable, str(REPO / "examples" / script))).finish()
        self.assertEqual(result.code, 0, result.describe())
        return result.out.decode()

    async def test_subclass_server(self) -> None:
        self.assertEqual(
            await self.run_example("subclass_server.py"), '{"count": 1, "name": "world"}\n'
        )

    async def test_asyncio_service_under_the_asyncio_reactor(self) -> None:
        """The handler awaits asyncio.sleep and an asyncio.Queue; the caller is asyncio code."""
        self.assertEqual(await self.run_example("asyncio_service.py"), '["HELLO", "ASYNCIO"]\n')

    async def test_asyncio_handler_fails_clearly_without_an_asyncio_loop(self) -> None:
        """Under the default reactor the same handler cannot await asyncio (what the asyncio
        reactor is for): the failure is an error, not a hang."""
        from grenache.peer import call_handler

        d = call_handler(shout, Request("r", "shout", {"words": ["a"]}))
        with self.assertRaises(RuntimeError):
            await d


class ExtendingPageTests(SynchronousTestCase):
    def test_literalincludes_name_existing_examples(self) -> None:
        text = EXTENDING.read_text()
        included = re.findall(r"^\.\. literalinclude:: (\S+)$", text, re.M)
        self.assertIn("../examples/subclass_server.py", included)
        self.assertIn("../examples/asyncio_service.py", included)
        for path in included:
            self.assertTrue((EXTENDING.parent / path).is_file(), path)
