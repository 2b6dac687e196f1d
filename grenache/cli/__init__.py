"""The ``grenache`` command: talk to a Grenache network from a shell.

::

    grenache lookup NAME [NAME...] [-a | -f | -l | -r]   peers announced as each NAME
    grenache announce NAME PORT               announce NAME at PORT once
    grenache announce [NAME,PORT...] [-d D] [-j]   each argument, or each line of stdin
    grenache put VALUE [-m | --key FILE] [-n N] [-s SALT] [-c N]
    grenache get HASH [-s SALT] [-v | -r | -i | -w]
    grenache keygen [FILE]                    an ed25519 key file for mutable puts
    grenache request NAME JSON [--transport T --timeout S --compress --tls-ca F ...]
    grenache map NAME JSON [--limit N]        (JSON - reads stdin, for request too)
    grenache serve NAME --handler pkg.module:function [--port P | --listen ENDPOINT]
                   [--transport T] [--tls-key F --tls-cert F] [--reactor asyncio]
    grenache pub NAME [--port P | --listen ENDPOINT]    publish each line of stdin
    grenache sub NAME [--count N]             print each message as a line

The flags of grenache-cli (Bitfinex's shell tools) mean the same here: ``-g HOST`` and ``-p
PORT`` name the grape (lookup, announce, put, get, request, map; ``-t`` for https on the first
four), ``lookup -a/-f/-l/-r``, ``announce -d/-j`` with lines on stdin, ``put -m/-n/-s/-c``,
``get -s/-r/-i/-w``, and grenache-cli's key files (``~/.grenache-cli/key``) sign mutable puts.

Every verb takes ``--grape URL`` (default ``http://127.0.0.1:30001``) and ``--timeout SECONDS``;
``grenache VERB --help`` shows its options and examples. Results are JSON on stdout, one line
each (``lookup -f/-l/-r`` and ``get -i/-w`` print plain text, for shell scripts); a failure is
one line on stderr and exit status 1; a malformed command line is one line on stderr and exit
status 2 (an unknown option is named: ``grenache serve: unknown option --bogus``).

One module per job: :mod:`~grenache.cli.options` (what every verb's command line shares),
:mod:`~grenache.cli.session` (a run's session, output and error messages),
:mod:`~grenache.cli.keys` (key files), :mod:`~grenache.cli.grape_verbs` (lookup, announce,
put, get, keygen), :mod:`~grenache.cli.rpc_verbs` (request, map, serve),
:mod:`~grenache.cli.pubsub_verbs` (pub, sub) and :mod:`~grenache.cli.main` (the verb table,
running a verb, the console script). Transports come from :mod:`grenache.transports`, TLS
flags from :mod:`grenache.tls_options` (docs/tls.rst shows them end to end).

Key files (``keygen``, ``put --key``) are described in :mod:`grenache.cli.keys`; ``grenache
keygen`` without a file writes ``~/.grenache/key.json``. grenache-cli's expanded ed25519 keys
are signed with by :mod:`grenache.cli.expanded_key`.
"""

from grenache.cli.keys import DEFAULT_KEY_FILE, read_key_file, write_key_file
from grenache.cli.main import VERBS, Options, main, run
from grenache.cli.session import CommandError

__all__ = [
    "DEFAULT_KEY_FILE",
    "VERBS",
    "CommandError",
    "Options",
    "main",
    "read_key_file",
    "run",
    "write_key_file",
]
