"""The code in docs/ runs as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from grenache.grape.service import Grape, GrapeConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


def code_blocks(text: str) -> list[str]:
    """The literal blocks of an RST text (each introduced by ``::``), dedented."""
    blocks = []
    for match in re.finditer(r"::\n\n((?:(?:    .*)?\n)+)", text):
        lines = match.group(1).splitlines()
        blocks.append("\n".join(line[4:] for line in lines).strip() + "\n")
    return blocks


class PeersGuideTests(TestCase):
    async def test_rpc_example_runs_against_a_grape(self) -> None:
        grape = Grape(GrapeConfig(dht_port=0, api_port=0, host="127.0.0.1"), reactor)
        await grape.start()
        self.addCleanup(grape.stop)
        example = next(b for b in code_blocks((DOCS / "peers.rst").read_text()) if "react(" in b)
        source = example.replace('"http://127.0.0.1:30001"', repr(grape.api_url))
        path = Path(self.mktemp() + ".py")
        path.write_text(source)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [str(path)], env=None, reactor=reactor
        )
        self.assertEqual(
            (code, out.decode().splitlines()), (0, ["hello world", "['hello all']"]), err
        )
