"""The programs in examples/, run as the README runs them (as subprocesses, from the repository
root) against an in-process grape."""

from __future__ import annotations

import json
import re
import sys

from twisted.trial.unittest import TestCase

from examples.fibonacci_service import MAX_LENGTH, fibonacci
from grenache.peer import Request
from tests.interop.harness import start_python_grape
from tests.test_cli import REPO, Proc, grenache, run_cli, spawn

EXAMPLES = REPO / "examples"
FIRST_TEN = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]


def example(case: TestCase, script: str, *args: str) -> Proc:
    return spawn(case, (sys.executable, str(EXAMPLES / script), *args))


class FibonacciHandlerTests(TestCase):
    def call(self, payload: object) -> object:
        return fibonacci(Request(rid="r", key="fibonacci_worker", payload=payload))

    def test_sequence(self) -> None:
        self.assertEqual(self.call({"length": 10}), FIRST_TEN)
        self.assertEqual(self.call({"length": 0}), [])
        self.assertEqual(len(self.call({"length": MAX_LENGTH})), MAX_LENGTH)  # type: ignore[arg-type]

    def test_bad_payloads(self) -> None:
        for payload in (None, 10, {}, {"length": -1}, {"length": "3"}, {"length": True}):
            with self.subTest(payload=payload):
                self.assertRaises(ValueError, self.call, payload)


class ExampleTests(TestCase):
    timeout = 120

    async def test_fibonacci_service_and_client(self) -> None:
        grape = await start_python_grape(self)
        service = example(self, "fibonacci_service.py", "--grape", grape.url, "--port", "0")
        line = await service.line(0)
        self.assertRegex(line, r"^fibonacci_worker listening on port \d+$")
        client = example(self, "fibonacci_client.py", "--grape", grape.url, "10")
        result = await client.finish()
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(json.loads(result.out), FIRST_TEN)
        # The service's error string reaches the client as a one-line error.
        client = example(self, "fibonacci_client.py", "--grape", grape.url, "--", "-1")
        result = await client.finish()
        self.assertEqual(result.code, 1, result.describe())
        self.assertIn(b"ERR_BAD_LENGTH", result.err)
        stopped = await service.stop()
        self.assertIn(stopped.code, (0, None), stopped.describe())

    async def test_fibonacci_client_without_service(self) -> None:
        grape = await start_python_grape(self)
        result = await example(self, "fibonacci_client.py", "--grape", grape.url).finish()
        self.assertEqual(result.code, 1, result.describe())
        self.assertEqual(result.err, b"fibonacci_client: ERR_GRAPE_LOOKUP_EMPTY\n")

    async def test_fibonacci_handler_served_by_the_command_line(self) -> None:
        grape = await start_python_grape(self)
        serve = grenache(
            self,
            "serve",
            "fibonacci_worker",
            "--handler",
            "examples.fibonacci_service:fibonacci",
            "--grape",
            grape.url,
        )
        await serve.line(0)
        result = await example(self, "fibonacci_client.py", "--grape", grape.url, "5").finish()
        self.assertEqual(json.loads(result.out), FIRST_TEN[:5], result.describe())
        result = await run_cli(
            self, "request", "fibonacci_worker", '{"length": 10}', "--grape", grape.url
        )
        self.assertEqual(result.json(), FIRST_TEN, result.describe())

    async def test_ticker_pub_and_sub(self) -> None:
        grape = await start_python_grape(self)
        pub = example(self, "ticker_pub.py", "--grape", grape.url, "--interval", "0.05")
        self.assertRegex(await pub.line(0), r"^publishing ticker on port \d+$")
        sub = example(self, "ticker_sub.py", "--grape", grape.url, "--count", "3")
        result = await sub.finish()
        self.assertEqual(result.code, 0, result.describe())
        ticks = [json.loads(line)["tick"] for line in result.out.decode().splitlines()]
        self.assertEqual(len(ticks), 3)
        self.assertEqual(ticks, list(range(ticks[0], ticks[0] + 3)))
        # The command line subscribes to the same publisher.
        result = await run_cli(self, "sub", "ticker", "--count", "2", "--grape", grape.url)
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(len(result.out.decode().splitlines()), 2)
        self.assertTrue(
            all(re.fullmatch(r'\{"tick":\d+\}', x) for x in result.out.decode().split())
        )

    async def test_ticker_sub_without_publisher(self) -> None:
        grape = await start_python_grape(self)
        result = await example(self, "ticker_sub.py", "--grape", grape.url).finish()
        self.assertEqual(result.code, 1, result.describe())
        self.assertEqual(result.err, b"ticker_sub: ERR_GRAPE_LOOKUP_EMPTY\n")


class StreamEchoExampleTests(TestCase):
    """examples/stream_echo.py, whose lines the README's "Streaming" section shows."""

    timeout = 120

    async def test_streams_and_reads_the_echo(self) -> None:
        grape = await start_python_grape(self)
        size = 3_000_000
        result = await example(
            self, "stream_echo.py", "--grape", grape.url, "--size", str(size)
        ).finish()
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.out, f"streamed {size} bytes, {size} echoed\n".encode())
