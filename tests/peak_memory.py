"""Run a command, then write the peak resident memory of its process tree: a helper for the tests.

    python -m tests.peak_memory OUT_FILE COMMAND [ARG ...]

Writes to ``OUT_FILE`` the largest peak RSS, in bytes, of the command's process and of every
descendant that was waited for (``wait4``'s ``ru_maxrss``: for a worker command, the pool, its
worker processes and their reader processes), and exits with the command's status.

Why a process of its own between the test and the command: Linux keeps a process's peak RSS
across ``exec``, so a command started by the test process would carry the test process's own
peak into the figure; started from this small process, it carries this one's (≈ 10 MB).
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    out, command = sys.argv[1], sys.argv[2:]
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    with open(out, "w") as fh:
        fh.write(str(usage.ru_maxrss * 1024))  # KiB on Linux
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
