"""The README and docs/ render cleanly and the code in them runs as written."""

from __future__ import annotations

import collections
import io
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, ClassVar

import docutils.core
from docutils import nodes
from docutils.parsers.rst import Directive, directives, roles
from docutils.parsers.rst.directives.body import CodeBlock
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import TestCase

from grenache.grape.service import Grape, GrapeConfig

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


# Sphinx's own roles and directives, so that pages written for Sphinx render with plain
# docutils: roles as literal text, ``literalinclude`` as the file's text (a missing file is an
# error), the rest as their content.
def _literal_role(
    name: str,
    rawtext: str,
    text: str,
    lineno: int,
    inliner: Any,
    options: Any = None,
    content: Any = None,
) -> tuple[list[nodes.Node], list[nodes.Node]]:
    return [nodes.literal(rawtext, text)], []


class _AnyOptions(collections.defaultdict):  # type: ignore[type-arg]
    """An option spec that takes every option (and is truthy, so docutils parses them)."""

    def __init__(self) -> None:
        super().__init__(lambda: directives.unchanged, name=directives.unchanged)


class _Content(Directive):
    optional_arguments = 1
    final_argument_whitespace = True
    has_content = True
    option_spec: ClassVar[Any] = _AnyOptions()

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(self.content, self.content_offset, container)
        return [container]


class _LiteralInclude(Directive):
    required_arguments = 1
    final_argument_whitespace = True
    option_spec: ClassVar[Any] = _AnyOptions()

    def run(self) -> list[nodes.Node]:
        source = Path(self.state.document.current_source).parent
        path = (source / self.arguments[0]).resolve()
        if not path.is_file():
            raise self.error(f"literalinclude: no file {path}")
        return [nodes.literal_block(text=path.read_text())]


for _role in (
    "ref",
    "doc",
    "class",
    "func",
    "meth",
    "mod",
    "attr",
    "exc",
    "data",
    "obj",
    "term",
    "file",
    "command",
    "program",
    "option",
    "envvar",
    "samp",
    "kbd",
    "py:class",
    "py:func",
    "py:meth",
    "py:mod",
    "py:attr",
    "py:exc",
    "py:data",
):
    roles.register_local_role(_role, _literal_role)
for _name in (
    "toctree",
    "seealso",
    "versionadded",
    "versionchanged",
    "deprecated",
    "highlight",
    "index",
    "only",
    "tabularcolumns",
    "automodule",
    "autoclass",
    "autofunction",
    "autoexception",
    "autodata",
    "automethod",
    "autoattribute",
    "currentmodule",
    "module",
):
    directives.register_directive(_name, _Content)
directives.register_directive("code-block", CodeBlock)
directives.register_directive("sourcecode", CodeBlock)
directives.register_directive("literalinclude", _LiteralInclude)


def render(path: Path) -> tuple[nodes.document, str]:
    """The doctree of an RST file and every message docutils wrote (warnings and worse)."""
    messages = io.StringIO()
    document = docutils.core.publish_doctree(
        path.read_text(),
        source_path=str(path),
        settings_overrides={
            "report_level": 2,
            "halt_level": 5,
            "warning_stream": messages,
            "input_encoding": "utf-8",
        },
    )
    return document, messages.getvalue()


def pages() -> list[Path]:
    return [REPO / "README.rst", *sorted(DOCS.glob("*.rst"))]


class RenderingTests(TestCase):
    def test_pages_render_without_warnings(self) -> None:
        found = [p.name for p in pages()]
        self.assertIn("protocol.rst", found)
        for path in pages():
            with self.subTest(page=path.name):
                _, messages = render(path)
                self.assertEqual(messages, "", path)

    def test_a_broken_page_is_reported(self) -> None:
        """The check can fail: a table row split in two, an unknown role, a missing include."""
        broken = Path(self.mktemp() + ".rst")
        broken.write_text(
            "Title\n=====\n\n:nosuchrole:`x`\n\n.. literalinclude:: nosuchfile.py\n\n"
            "=====  =====\na      b\n=====\n"
        )
        _, messages = render(broken)
        self.assertIn("nosuchrole", messages)
        self.assertIn("nosuchfile.py", messages)
        self.assertIn("Malformed table", messages)

    def test_no_table_row_is_split(self) -> None:
        """A simple table's first cell continued on the next line starts a new row, without
        any warning: no cell of a table in the README or docs/ is empty, and no row starts with what
        can only be a continuation (``(--node_spelling)``, ``[--option]``)."""
        for page in pages():
            document, _ = render(page)
            for row in document.findall(nodes.row):
                cells = [entry.astext().strip() for entry in row.findall(nodes.entry)]
                self.assertTrue(all(cells), (page.name, cells))
                self.assertFalse(cells[0].startswith(("(", "[")), (page.name, cells))

    def test_doc_references_name_pages(self) -> None:
        """Plain docutils renders ``:doc:`` and ``toctree`` as text: each target is checked
        here to be a page of the site (Sphinx checks them too, in ``tox -e docs``)."""
        site = {path.relative_to(DOCS).with_suffix("").as_posix() for path in site_pages()}
        self.assertIn("api/index", site)
        for page in site_pages():
            for target in doc_references(page):
                with self.subTest(page=page.name, target=target):
                    self.assertIn(target, site)
        broken = Path(self.mktemp() + ".rst")
        broken.write_text("T\n=\n\n:doc:`nosuch`\n\n.. toctree::\n   :maxdepth: 1\n\n   other\n")
        self.assertEqual(doc_references(broken), ["nosuch", "other"])


def site_pages() -> list[Path]:
    """The pages of the Sphinx site: docs/ and its folders, but not ``_build``, ``_ext``..."""
    return sorted(
        path
        for path in DOCS.rglob("*.rst")
        if not any(part.startswith("_") for part in path.relative_to(DOCS).parts)
    )


def doc_references(page: Path) -> list[str]:
    """The pages a page names with ``:doc:`` and in its toctrees, relative to docs/."""
    text = page.read_text()
    names = [
        match.group(2) or match.group(1)
        for match in re.finditer(r":doc:`([^`<]+?)(?:\s*<([^>]+)>)?`", text)
    ]
    for block in re.finditer(r"^\.\. toctree::\n((?:(?:   .*)?\n)+)", text, re.MULTILINE):
        names.extend(
            line.strip()
            for line in block.group(1).splitlines()
            if line.strip() and not line.strip().startswith(":")
        )
    folder = page.resolve().parent
    here = folder.relative_to(DOCS).as_posix() if folder.is_relative_to(DOCS) else "."
    return [
        name.lstrip("/") if name.startswith("/") or here == "." else f"{here}/{name}"
        for name in (n.strip() for n in names)
    ]


# --- the code in the pages ---------------------------------------------------------------

_PYTHON_START = ("from ", "import ", "def ", "class ", "async def ")


def python_blocks(path: Path) -> list[tuple[str, str]]:
    """``(code, text of the paragraph before it)`` for each Python literal block of a page."""
    document, _ = render(path)
    blocks = []
    for block in document.findall(nodes.literal_block):
        code = block.astext()
        if not any(line.startswith(_PYTHON_START) for line in code.splitlines()):
            continue
        parent = block.parent
        index = parent.index(block)
        before = parent[index - 1].astext() if index > 0 else ""
        blocks.append((code, before))
    return blocks


def code_blocks(text: str) -> list[str]:
    """The literal blocks of an RST text (each introduced by ``::``), dedented."""
    blocks = []
    for match in re.finditer(r"::\n\n((?:(?:    .*)?\n)+)", text):
        lines = match.group(1).splitlines()
        blocks.append("\n".join(line[4:] for line in lines).strip() + "\n")
    return blocks


def is_fragment_of(code: str, source: str) -> bool:
    """Every line of ``code`` is a line of ``source``, in the same order (indentation aside)."""
    lines = iter(line.strip() for line in source.splitlines())
    return all(
        any(line == wanted for line in lines)
        for wanted in (c.strip() for c in code.splitlines())
        if wanted
    )


async def run_python(case: TestCase, source: str) -> tuple[int, list[str], bytes]:
    path = Path(case.mktemp() + ".py").resolve()
    path.write_text(source)
    out, err, code = await getProcessOutputAndValue(
        sys.executable, [str(path)], env={"PYTHONPATH": str(REPO)}, path=str(REPO), reactor=reactor
    )
    return code, out.decode().splitlines(), err


class CodeInPagesTests(TestCase):
    def test_python_blocks_run_or_name_their_example(self) -> None:
        """A Python block in the README or docs/ either is a complete program (run below), or a
        whole file of examples/ shown with literalinclude, or says, in the paragraph before it,
        which file of examples/ it comes from, and is a part of it."""
        blocks = [b for page in pages() for b in python_blocks(page)]
        self.assertGreaterEqual(len(blocks), 5)
        included = {path.read_text().strip() for path in (REPO / "examples").glob("*.py")}
        for code, before in blocks:
            if "react(" in code or code.strip() in included:
                continue
            named = re.findall(r"examples/\w+\.py", before)
            self.assertTrue(named, f"no example named before:\n{code}")
            source = (REPO / named[-1]).read_text()
            self.assertTrue(is_fragment_of(code, source), f"not a part of {named[-1]}:\n{code}")

    def test_fragment_check_can_fail(self) -> None:
        self.assertTrue(is_fragment_of("a = 1\n  b()\n", "a = 1\nx\n    b()\n"))
        self.assertFalse(is_fragment_of("b()\na = 1\n", "a = 1\nb()\n"))
        self.assertFalse(is_fragment_of("c()\n", "a = 1\nb()\n"))

    async def test_deploying_program_runs(self) -> None:
        (program,) = [code for code, _ in python_blocks(DOCS / "deploying.rst") if "react(" in code]
        code, out, err = await run_python(self, program)
        self.assertEqual(code, 0, err)
        self.assertRegex("\n".join(out), r"^grape API at http://127\.0\.0\.1:\d+$")

    async def test_readme_grape_program_runs(self) -> None:
        (program,) = [code for code, _ in python_blocks(REPO / "README.rst") if "react(" in code]
        code, out, err = await run_python(self, program)
        self.assertEqual(code, 0, err)
        self.assertRegex(
            "\n".join(out), r"^DHT on UDP port \d+, HTTP API at http://127\.0\.0\.1:\d+$"
        )


class ProtocolPageTests(TestCase):
    SECTIONS: ClassVar[list[str]] = [
        "Addresses",
        "JSON",
        "Grape HTTP API",
        "Grape WebSocket API",
        "DHT messages",
        "BEP 44 items",
        "Link",
        "RPC over HTTP",
        "HTTP streaming",
        "RPC over WebSocket",
        "Pub/sub over WebSocket",
        "RPC over ZeroMQ",
        "Pub/sub over ZeroMQ",
        "TLS and fingerprints",
        "Deliberate differences from Node.js",
    ]

    def test_sections_cited_by_the_code(self) -> None:
        """The code cites these titles (``docs/protocol.rst, *Title*``); each one exists."""
        document, _ = render(DOCS / "protocol.rst")
        titles = [
            section[0].astext()
            for section in document.findall(nodes.section)
            if section.parent is document or isinstance(section.parent, nodes.document)
        ]
        self.assertEqual(titles, self.SECTIONS)
        cited = set()
        for path in (REPO / "grenache").rglob("*.py"):
            cited.update(re.findall(r"docs/protocol\.rst,\s+\*([^*]+)\*", path.read_text()))
        cited = {" ".join(title.split()) for title in cited}
        self.assertLessEqual(cited, set(self.SECTIONS))

    def test_json_table_is_what_the_codec_writes(self) -> None:
        from grenache.codec import json_dumps

        document, _ = render(DOCS / "protocol.rst")
        rows = 0
        for table in document.findall(nodes.table):
            header = [e.astext() for e in next(iter(table.findall(nodes.row))).findall(nodes.entry)]
            if header != ["Python value", "text on the wire"]:
                continue
            for row in list(table.findall(nodes.row))[1:]:
                value, text = (e.astext() for e in row.findall(nodes.entry))
                self.assertEqual((value, json_dumps(eval(value))), (value, text.encode()))
                rows += 1
        self.assertGreater(rows, 5)


class PeersGuideTests(TestCase):
    async def test_rpc_example_runs_against_a_grape(self) -> None:
        grape = Grape(GrapeConfig(dht_port=0, api_port=0, host="127.0.0.1"), reactor)
        await grape.start()
        self.addCleanup(grape.stop)
        example = next(b for b in code_blocks((DOCS / "peers.rst").read_text()) if "react(" in b)
        source = example.replace('"http://127.0.0.1:30001"', repr(grape.api_url))
        code, out, err = await run_python(self, source)
        self.assertEqual((code, out), (0, ["hello world", "['hello all']"]), err)


def shell_commands(text: str) -> list[list[str]]:
    """The ``grenache`` and ``twistd`` commands of a page's literal blocks, continuation lines
    joined; in a block with ``$ `` prompts, only the lines after a prompt (the others are
    output)."""
    found = []
    for block in code_blocks(text):
        prompted = any(line.startswith("$ ") for line in block.splitlines())
        lines = iter(block.splitlines())
        for line in lines:
            if prompted and not line.startswith("$ "):
                continue
            command = line.strip().removeprefix("$ ")
            while command.endswith("\\"):
                command = command[:-1] + " " + next(lines).strip()
            if command.startswith(("grenache ", "twistd ")):
                found.append(shlex.split(command))
    return found


def parse_command(argv: list[str]) -> str:
    """Parse a command line as ``grenache`` or ``twistd`` would (a usage error raises) and
    say which verb or plugin it runs."""
    from twisted.scripts.twistd import ServerOptions

    from grenache import cli

    options: Any = cli.Options() if argv[0] == "grenache" else ServerOptions()
    if argv[0] not in ("grenache", "twistd"):
        raise ValueError(f"not a grenache or twistd command: {argv}")
    options.parseOptions(argv[1:])
    return f"{argv[0]} {options.subCommand}"


class TutorialTests(TestCase):
    def setUp(self) -> None:
        from tests.support import make_pki, write_identity

        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        pki = make_pki()
        (directory / "ca.crt").write_bytes(pki.ca.cert)
        write_identity(pki.server, directory, "server")
        write_identity(pki.client, directory, "client")
        self.files = {path.name: str(path) for path in directory.iterdir()}

    def test_every_command_parses(self) -> None:
        """Every ``grenache`` and ``twistd`` command of the tutorial is accepted as written
        (the programs it runs are examples/, run by tests/test_examples.py)."""
        found = shell_commands((DOCS / "tutorial.rst").read_text())
        kinds = set()
        for argv in found:
            argv = [self.files.get(arg, arg) for arg in argv]
            if argv[-1] == "--help":
                continue
            with self.subTest(argv=argv):
                kinds.add(parse_command(argv))
        self.assertEqual(
            kinds,
            {"twistd grape", "grenache lookup", "grenache serve", "grenache request"},
        )

    def test_a_bad_command_is_refused(self) -> None:
        (argv,) = shell_commands("x::\n\n    $ grenache request a b \\\n        --no-such-flag\n")
        self.assertEqual(argv, ["grenache", "request", "a", "b", "--no-such-flag"])
        self.assertRaises(usage.UsageError, parse_command, argv)


class DeployFilesTests(TestCase):
    """examples/deploy/, shown by docs/deploying.rst: the systemd unit and the Dockerfile run
    ``twistd grape`` with a command line it accepts."""

    DEPLOY = REPO / "examples" / "deploy"

    def test_systemd_unit(self) -> None:
        unit = (self.DEPLOY / "grape.service").read_text()
        (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, re.MULTILINE)
        argv = shlex.split(exec_start)
        self.assertTrue(argv[0].endswith("/bin/twistd"), argv)
        self.assertEqual(parse_command(["twistd", *argv[1:]]), "twistd grape")
        self.assertIn("--nodaemon", argv)
        for section in ("[Unit]", "[Service]", "[Install]"):
            self.assertIn(section, unit)

    def test_dockerfile(self) -> None:
        text = (self.DEPLOY / "Dockerfile").read_text()
        (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE)
        (command,) = re.findall(r"^CMD (\[.*\])$", text, re.MULTILINE)
        argv = json.loads(entrypoint) + json.loads(command)
        self.assertEqual(parse_command(argv), "twistd grape")
        # The flags docker run gives after the image name replace CMD.
        self.assertEqual(
            parse_command([*json.loads(entrypoint), "--bn", "grape-b.internal:20001"]),
            "twistd grape",
        )
        self.assertRegex(text, r"(?m)^USER (?!root)")

    def test_deploying_page_includes_them(self) -> None:
        page = (DOCS / "deploying.rst").read_text()
        self.assertIn(".. literalinclude:: ../examples/deploy/grape.service", page)
        self.assertIn(".. literalinclude:: ../examples/deploy/Dockerfile", page)
