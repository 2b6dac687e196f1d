"""grenache.logs: structured events as JSON lines (the observer, ``twistd --logger``'s
factory, and ``grenache serve --log-format json`` end to end with ``--metrics``)."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import treq
from twisted.logger import Logger
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from grenache import logs
from grenache.cli.rpc_verbs import ServeOptions
from tests.interop.harness import start_python_grape
from tests.test_cli import grenache


class ObserverTests(SynchronousTestCase):
    def test_one_json_object_per_line_with_the_event_fields(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="grenache.test", observer=logs.observer("json", "info", out))
        log.info("announce of {name}:{port} ok", name="svc", port=1337, event="announce")
        log.debug("not at info level", event="hidden")
        log.warn("announce of {name}:{port} failed ({error})", name="svc", port=1, error="x")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual((first["name"], first["port"], first["event"]), ("svc", 1337, "announce"))
        self.assertEqual(first["log_namespace"], "grenache.test")
        self.assertEqual(first["log_level"]["name"], "info")
        self.assertEqual(first["log_format"], "announce of {name}:{port} ok")
        self.assertEqual(second["error"], "x")
        self.assertNotIn("\x1e", out.getvalue())  # JSON lines, not RFC 7464 sequences

    def test_text_format_and_unknown_format(self) -> None:
        out = io.StringIO()
        log = Logger(observer=logs.observer("text", "info", out))
        log.info("serving {name}", name="svc")
        self.assertIn("serving svc", out.getvalue())
        with self.assertRaises(ValueError):
            logs.observer("xml")

    def test_twistd_logger_factory_writes_to_stdout(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = logs.json_observer()
        Logger(observer=observer).info("hello {who}", who="world")
        self.assertEqual(json.loads(out.getvalue())["who"], "world")

    def test_serve_option(self) -> None:
        options = ServeOptions()
        options.parseOptions(["svc", "--handler", "m:f", "--log-format", "json"])
        self.assertEqual(options["log-format"], "json")
        with self.assertRaises(usage.UsageError):
            ServeOptions().parseOptions(["svc", "--handler", "m:f", "--log-format", "xml"])
        with self.assertRaises(usage.UsageError):
            ServeOptions().parseOptions(["svc", "--handler", "m:f", "--metrics", "nonsense:1"])


class ServeTests(TestCase):
    """``grenache serve --metrics 0 --log-format json`` as a subprocess."""

    timeout = 60

    async def test_serve_json_logs_and_metrics(self) -> None:
        grape = await start_python_grape(self)
        proc = grenache(
            self,
            "serve",
            "logged_svc",
            "--handler",
            "tests.test_cli:echo",
            "--grape",
            grape.url,
            "--bind",
            "127.0.0.1",
            "--metrics",
            "tcp:0:interface=127.0.0.1",
            "--log-format",
            "json",
        )
        ready = json.loads(await proc.line(0))
        self.assertEqual(ready["announced"], {"logged_svc": 1})
        port = ready["metrics"]
        response = await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(await response.content())["status"], "healthy")
        response = await treq.get(f"http://127.0.0.1:{port}/metrics", persistent=False)
        text = (await response.content()).decode()
        self.assertIn('grenache_announces_total{name="logged_svc",outcome="ok"} 1.0', text)
        await proc.wait_for(
            lambda p: _event(p, "announce") is not None, "an announce event on stderr"
        )
        events = _events(proc)
        announce = _event(proc, "announce")
        assert announce is not None
        self.assertEqual(announce["name"], "logged_svc")
        self.assertEqual(announce["count"], 1)
        self.assertEqual(announce["grape"], grape.url)
        listening = _event(proc, "listening")
        assert listening is not None
        self.assertEqual(listening["port"], ready["port"])
        self.assertTrue(all(isinstance(e, dict) for e in events))
        await proc.stop()
        self.assertIsNotNone(_event(proc, "stopped"))
        _events(proc)  # every line of stderr is still one JSON object


def _events(proc: Any) -> list[Any]:
    return [json.loads(line) for line in bytes(proc.err).decode().splitlines() if line.strip()]


def _event(proc: Any, name: str) -> Any:
    for line in bytes(proc.err).decode().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            return event
    return None
