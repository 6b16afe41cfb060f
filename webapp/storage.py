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
from typing import Any, Iterator, Mapping, Protocol

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
        """Remove ``key``; no error if it is absent. Raises :class:`StorageError` if it cannot."""

    def keys(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every stored key that starts with ``prefix`` (a plain string prefix), with its
        modification time (Unix seconds); lazily, so a large store is never held in memory.

        Includes what writes that never completed left behind (:meth:`LocalStorage.keys`): no
        row names it, so the orphans job deletes it once it is older than ``ORPHAN_GRACE``.
        Raises :class:`StorageError` if the storage cannot be listed."""


def is_key(key: str) -> bool:
    """Whether ``key`` is a valid storage key (:func:`check_key` without the exception)."""
    return bool(_KEY.match(key)) and ".." not in key.split("/")


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid storage key; raise ``ValueError`` otherwise."""
    if not is_key(key):
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
        except OSError as exc:
            raise StorageError(f"could not delete {key}: {exc.strerror}") from exc

    def keys(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every file under the folder whose key starts with ``prefix``, with its ``st_mtime``.

        Only folders that can hold such keys are walked (``prefix="documents/ab/"`` reads one
        folder), each in name order; symbolic links are not followed. A file whose name is not a
        valid key was not made by Docket and is not listed (so never deleted through this
        interface). The temporary files of :meth:`put` (``.upload-*`` beside their key) *are*
        listed: one still being written is seconds old, one older than that is what a write that
        crashed between the write and the rename left behind — an orphan like any file no row
        names. A folder that does not exist (nothing stored yet) lists nothing.
        """
        yield from self._walk(self.root, "", prefix)

    def _walk(self, folder: Path, relative: str, prefix: str) -> Iterator[tuple[str, float]]:
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"could not list {relative or 'the storage folder'}: {exc.strerror}") from exc
        for entry in entries:
            key = relative + entry.name
            if entry.is_dir(follow_symlinks=False):
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(Path(entry.path), key + "/", prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix) and is_key(key):
                try:
                    modified = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:  # deleted while the folder was being listed
                    continue
                yield key, modified


def storage_from_config(config: Mapping[str, Any]) -> Storage:
    """Return the storage configured by ``STORAGE_PATH`` (a local or mounted folder)."""
    return LocalStorage(config["STORAGE_PATH"])
