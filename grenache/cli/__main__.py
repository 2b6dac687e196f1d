"""``python -m grenache.cli``: the ``grenache`` command."""

from grenache.cli.main import main

main()
