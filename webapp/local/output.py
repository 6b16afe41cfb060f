"""Output that cannot raise: for the run command and its supervisor, whose terminal or pipe may go
away while they are still stopping what they started.

A closed terminal makes every write to it fail with ``EIO``; a pipe whose reader ended (``bin/run
| tee run.log``, then Ctrl-C, which ends ``tee`` too) makes them fail with ``EPIPE``
(``BrokenPipeError``: Python ignores SIGPIPE). Either used to abort the shutdown half way, leaving
the Procfile's processes running. :class:`UnbreakableOutput` points the stream's file descriptor
at ``/dev/null`` on the first such failure and carries on: the log lines of the shutdown are lost
(nobody can read them any more), the shutdown is not.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


class UnbreakableOutput:
    """A text stream that writes to ``stream`` until writing fails with an ``OSError``, then to
    ``/dev/null`` (the same file descriptor, so the interpreter's last flush at exit cannot fail
    either). Anything else is passed through to ``stream`` (``isatty``, ``encoding``, ``fileno``).

    Args:
        stream: a text stream with a file descriptor (``sys.stdout``, ``sys.stderr``).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False  # whether output now goes to /dev/null

    def write(self, text: str) -> int:
        """Write ``text``; returns its length, even when it went nowhere."""
        try:
            self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self._divert()
        return len(text)

    def flush(self) -> None:
        """Flush ``stream``; a failure diverts it to /dev/null instead of raising."""
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._divert()

    def _divert(self) -> None:
        if self.broken:
            return
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            self._stream.flush()  # what was buffered goes to /dev/null now
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def make_output_unbreakable() -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` by :class:`UnbreakableOutput` wrappers (once;
    calling it again changes nothing)."""
    if not isinstance(sys.stdout, UnbreakableOutput):
        sys.stdout = UnbreakableOutput(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, UnbreakableOutput):
        sys.stderr = UnbreakableOutput(sys.stderr)  # type: ignore[assignment]
