"""The process's streams and variables, passed in so that tests can run the CLI in
process with their own. A module of its own (and a plain class: a dataclass costs an
import) because the quick check needs it before anything else is imported."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO


class Environment:
    def __init__(
        self,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
        stdin: TextIO | None = None,
    ) -> None:
        self.stdout: TextIO = sys.stdout if stdout is None else stdout
        self.stderr: TextIO = sys.stderr if stderr is None else stderr
        self.environ: Mapping[str, str] = dict(os.environ) if environ is None else environ
        self.stdin: TextIO = sys.stdin if stdin is None else stdin  # `init` asks there
