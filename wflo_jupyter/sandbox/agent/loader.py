"""The agent's module loader: sibling files of this folder, loaded by path.

Inside the sandbox the agent runs as ``python3 -I /opt/wflo-agent/agent.py``: there is no
package and, under ``-I``, not even this folder on ``sys.path``, so the agent's parts
cannot ``import`` each other. ``load("kernel")`` compiles ``kernel.py`` next to this file
and runs it in a new module registered as ``_wflo_agent_kernel`` in ``sys.modules``, once
per process (a second ``load`` returns the same module). Plain ``compile`` + ``exec``:
``importlib.util`` adds milliseconds to every start.

``agent.py`` runs this file by hand as ``_wflo_agent_loader`` (the one file it loads
itself); every other part then reaches ``load`` with ``from _wflo_agent_loader import
load``, which ``sys.modules`` answers. On the host the folder is the package
``wflo_jupyter.sandbox.agent`` and the parts import each other normally (``from . import``).
"""

from __future__ import annotations

import os
import sys
import types

PREFIX = "_wflo_agent_"
"""``sys.modules`` name of a loaded part: this prefix and the file's stem."""
_HERE = os.path.dirname(os.path.abspath(__file__))


def load(name: str) -> types.ModuleType:
    """The part ``name`` (``name``.py next to this file), run once per process."""
    key = PREFIX + name
    loaded = sys.modules.get(key)
    if loaded is not None:
        return loaded
    path = os.path.join(_HERE, f"{name}.py")
    with open(path, encoding="utf-8") as source:
        code = compile(source.read(), path, "exec")
    module = types.ModuleType(key)
    module.__file__ = path
    sys.modules[key] = module  # registered before it runs, like an import
    exec(code, module.__dict__)
    return module
