"""The command-line parser every ``predaudit`` command uses (here so that schemas/ can use it too)."""

from __future__ import annotations

import argparse
from typing import Any


class StrictParser(argparse.ArgumentParser):
    """No prefix matching (``--sink`` is an error, not ``--sinks``); a usage error is one line on
    stderr and exit 2, never a traceback."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
