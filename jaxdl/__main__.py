"""``python -m jaxdl``: the same program as the ``jaxdl`` command."""

from jaxdl.cli import console_main

console_main()
