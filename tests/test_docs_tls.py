"""docs/tls.rst runs as written: its ``openssl`` commands make the certificates, then its
``grenache serve`` and ``grenache request`` commands run with them, and their output matches
what the page shows.

The shell commands are the ``$ `` lines of the page's literal blocks, each followed by the
output the page shows for it. They run in ``/bin/sh`` in an empty directory, with ``grenache``
on the PATH running this checkout; the only change made to them is ``--grape URL`` added to
each ``grenache`` command, for the test's own grape (the page uses the default grape).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import attrs
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.interop.harness import start_python_grape
from tests.test_cli import REPO, reactor, spawn

PAGE = REPO / "docs" / "tls.rst"
_FINGERPRINT = r"(?:[0-9A-F]{2}:){19}[0-9A-F]{2}"


@attrs.frozen
class Command:
    """A ``$ `` line of the page and the output lines shown after it."""

    line: str
    output: tuple[str, ...]


def shell_commands(text: str) -> list[Command]:
    """Every ``$ `` command in the literal blocks of ``text``, in order, with its output."""
    commands: list[Command] = []
    for match in re.finditer(r"::\n\n((?:(?:    .*)?\n)+)", text):
        lines = [line[4:] for line in match.group(1).splitlines() if line.strip()]
        for line in lines:
            if line.startswith("$ "):
                commands.append(Command(line[2:], ()))
            elif commands and lines[0].startswith("$ "):
                last = commands[-1]
                commands[-1] = Command(last.line, (*last.output, line))
    return commands


def output_pattern(shown: str) -> re.Pattern[str]:
    """What a shown output line stands for: any fingerprint where one is shown, anything
    for ``...``; the rest exactly (the digest's name in either case, as OpenSSL 1.1 and 3
    write it)."""
    pattern = re.escape(shown).replace(re.escape("..."), ".*")
    pattern = re.sub(_FINGERPRINT, _FINGERPRINT, pattern)
    return re.compile(pattern.replace("sha1", "(?:sha1|SHA1)") + r"\Z")


class ParsingTests(TestCase):
    def test_the_page_has_the_commands(self) -> None:
        commands = shell_commands(PAGE.read_text())
        programs = [c.line.split()[0] for c in commands]
        self.assertEqual(programs.count("openssl"), 6)
        self.assertIn("grenache", programs)
        self.assertTrue(commands[-1].output[0].startswith("grenache request: "))
        self.assertTrue(
            output_pattern(commands[7].output[0]).match(
                "SHA1 Fingerprint=61:65:9A:AE:90:F4:E1:54:89:E1:FC:61:E5:32:9E:A5:AF:2B:05:AC"
            )
        )


class TLSPageTests(TestCase):
    timeout = 180

    async def test_commands_run_as_written(self) -> None:
        if shutil.which("openssl") is None:
            raise SkipTest("no openssl on the PATH")
        grape = await start_python_grape(self)
        work = Path(self.mktemp()).resolve()
        bin_dir = work / "bin"
        bin_dir.mkdir(parents=True)
        shim = bin_dir / "grenache"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m grenache.cli "$@"\n')
        shim.chmod(0o755)
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
        }
        commands = shell_commands(PAGE.read_text())
        served = False
        for command in commands:
            line = command.line
            if line.startswith("grenache "):
                line += f" --grape {grape.url}"
            with self.subTest(command=command.line):
                if line.startswith("grenache serve "):
                    served = True
                    proc = spawn(self, ("/bin/sh", "-c", f"exec {line}"), work, env)
                    ready = json.loads(await proc.line(0))
                    shown = json.loads(command.output[0])
                    self.assertEqual(set(ready), set(shown))
                    self.assertEqual(ready["name"], shown["name"])
                    self.assertEqual(ready["announced"], shown["announced"])
                    self.assertEqual(ready["transport"], shown["transport"])
                    continue
                out, err, code = await getProcessOutputAndValue(
                    "/bin/sh", ["-c", line], env=env, path=str(work), reactor=reactor
                )
                shown_error = command.output and command.output[0].startswith("grenache ")
                text = (err if shown_error else out).decode().splitlines()
                self.assertEqual(code != 0, bool(shown_error), err.decode())
                self.assertEqual(len(text), len(command.output), (out, err))
                for actual, shown_line in zip(text, command.output, strict=True):
                    self.assertRegex(actual, output_pattern(shown_line))
        self.assertTrue(served)
