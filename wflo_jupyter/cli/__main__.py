"""``python -m wflo_jupyter.cli``: the ``wflo`` command."""

from wflo_jupyter.cli import main

main()
