"""Where uploaded bytes live between the web request and the worker.

One small interface, :class:`Storage`, addressed by server-made keys (never a client's filename).
The default, :class:`LocalStorage`, is a folder. On a platform where web and worker run on
different machines it must be a folder both mount, or another implementation of this interface
(an S3-compatible bucket is planned) selected in :func:`storage_from_config`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Protocol

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-./]{0,200}$")


class StorageError(Exception):
    """The storage could not store or return the bytes of a key.

    Attributes:
        transient: ``False`` when the key does not exist (trying again will not help),
            ``True`` when the storage itself failed (a full disk, an unreachable mount).
    """

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class Storage(Protocol):
    """Bytes by key. Keys are made by Docket: letters, digits, ``_ - . /``, no ``..``."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (replacing what was there), atomically."""

    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``. Raises :class:`StorageError` if there are none."""

    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid storage key; raise ``ValueError`` otherwise."""
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


class LocalStorage:
    """A folder on the local file system (the default; shared folder for multi-machine setups)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write to a temporary file and rename: a reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"could not store {key}: {exc.strerror}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"the stored file {key} is missing", transient=False) from None
        except OSError as exc:
            raise StorageError(f"could not read {key}: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass


def storage_from_config(config: Mapping[str, Any]) -> Storage:
    """Return the storage configured by ``STORAGE_PATH`` (a local or mounted folder)."""
    return LocalStorage(config["STORAGE_PATH"])
