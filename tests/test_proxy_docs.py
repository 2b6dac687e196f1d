"""docs/proxy.rst says what the code does: every command on the page is accepted by the real
option parsers, and the replies and errors it quotes are the ones the proxy sends. (The flows
themselves run in tests.test_proxy_sockets and tests.interop.test_proxy_interop.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from grenache import cli
from grenache.grape.tap import Options as GrapeOptions
from grenache.proxy import (
    BadControlPayload,
    ForwardingClients,
    ProxyLimitReached,
    Route,
    RPCProxy,
    parse_control,
)
from grenache.proxy_tap import Options as ProxyTapOptions
from grenache.testing import MemoryNetwork
from grenache.transports import transport_names
from tests.support import make_pki, write_identity

PAGE = Path(__file__).resolve().parent.parent / "docs" / "proxy.rst"


def commands(text: str) -> list[list[str]]:
    """Each ``$ command`` of the page's console blocks, continuation lines joined, without
    a trailing ``&`` or a ``< file`` redirection."""
    found: list[list[str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line.startswith("$ "):
            continue
        command = line[2:]
        while command.endswith("\\"):
            command = command[:-1] + " " + lines[i].strip()
            i += 1
        command = re.sub(r"\s*&$", "", command)
        command = re.sub(r"\s*<\s*\S+", "", command)
        found.append(shlex.split(command))
    return found


def one_line(text: str) -> str:
    return " ".join(text.split())


class ProxyPageTests(TestCase):
    def setUp(self) -> None:
        self.text = PAGE.read_text(encoding="utf-8")
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        pki = make_pki()
        (directory / "ca.crt").write_bytes(pki.ca.cert)
        write_identity(pki.server, directory, "proxy")
        write_identity(pki.client, directory, "client")
        self.files = {path.name: str(path) for path in directory.iterdir()}

    def test_every_command_parses(self) -> None:
        found = commands(self.text)
        self.assertGreaterEqual(len(found), 15)
        kinds = set()
        for argv in found:
            argv = [self.files.get(arg, arg) for arg in argv]
            with self.subTest(argv=argv):
                if argv[0] == "grenache":
                    options: Any = cli.Options()
                    options.parseOptions(argv[1:])
                    kinds.add(options.subCommand)
                elif argv[:3] == ["twistd", "-n", "grape"]:
                    GrapeOptions().parseOptions(argv[3:])
                    kinds.add("grape")
                elif argv[:3] == ["twistd", "-n", "grenache-proxy"]:
                    ProxyTapOptions().parseOptions(argv[3:])
                    kinds.add("twistd grenache-proxy")
                else:
                    self.fail(f"a command the test does not know: {argv}")
        self.assertLessEqual(
            {"proxy", "request", "serve", "pub", "sub", "grape", "twistd grenache-proxy"}, kinds
        )

    def test_the_commands_cover_every_mode_and_flag_family(self) -> None:
        text = " ".join(" ".join(argv) for argv in commands(self.text))
        for fragment in ("--pubsub", "--from http --port", "--to-tls-ca", "--tls-key"):
            self.assertIn(fragment, text)

    def test_quoted_errors_are_the_proxys(self) -> None:
        page = one_line(self.text)
        names = transport_names()
        for payload in ("tea", "smtp:tea"):
            with self.assertRaises(BadControlPayload) as caught:
                parse_control(payload, names)
            self.assertIn(f"``rpc_proxy: {caught.exception}``", page)
        clock: Any = Clock()
        network = MemoryNetwork(clock)
        link = network.link()
        clients = ForwardingClients(
            link, clock, make_transport=lambda _: network.client_transport()
        )
        proxy = RPCProxy(link, network.server_transport(), clients, control_key="rpc_proxy")
        self.successResultOf(proxy.listen())
        for i in range(proxy.max_keys):
            proxy.add(f"ws:{i}", Route("ws", str(i)))
        with self.assertRaises(ProxyLimitReached) as limit:
            proxy.add("ws:NAME", Route("ws", "NAME"))
        self.assertIn(f"``rpc_proxy: {limit.exception}``", page)
        self.successResultOf(proxy.stop())
        for quoted in (
            '"Started proxying ws:coffee"',
            '"Stopped proxying ws:coffee"',
            "``KEY is not proxied``",
        ):
            self.assertIn(quoted, page)
