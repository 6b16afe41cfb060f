"""Where uploaded bytes and report files live, shared by the web process and the workers.

One small interface, :class:`Storage`, addressed by server-made keys (never a client's filename),
chosen by one setting, ``STORAGE_URL`` (:func:`storage_from_config`):

* unset, or ``file:///path``: :class:`LocalStorage`, a folder (``STORAGE_PATH`` when unset). On a
  platform where web and worker run on different machines it must be a folder both mount.
* ``s3://bucket/prefix``: :class:`S3Storage`, an S3-compatible bucket (AWS S3, a Heroku add-on
  such as Bucketeer, MinIO, …) through boto3. Endpoint, credentials and region come from boto3's
  own variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_DEFAULT_REGION``), never from Docket's config, so no secret passes through it.

Both stream: :meth:`Storage.put_stream` and :meth:`Storage.open` move a file in bounded blocks,
so a 50 MB upload is never held in memory on its way in or out. Nothing connects at import; the
boto3 client is made on first use in each process (clients are not fork-safe).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Protocol
from urllib.parse import urlsplit

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-./]{0,200}$")
MB = 1024 * 1024
# Bytes copied at a time by the streaming methods (and held at once per copy).
COPY_BLOCK = 1 * MB
# A file that open() downloads from S3 stays in memory up to this size, then goes to a temporary file.
SPOOL_MAX = 1 * MB


class StorageError(Exception):
    """The storage could not store or return the bytes of a key.

    Attributes:
        transient: ``False`` when the key does not exist (trying again will not help),
            ``True`` when the storage itself failed (a full disk, an unreachable mount or endpoint,
            refused credentials, a 5xx answer).
    """

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class Storage(Protocol):
    """Bytes by key. Keys are made by Docket: letters, digits, ``_ - . /``, no ``..``.

    Every method raises ``ValueError`` for an invalid key and :class:`StorageError` when the
    storage fails."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (replacing what was there), atomically."""

    def put_stream(self, key: str, fileobj: BinaryIO) -> None:
        """Store what ``fileobj`` (a readable binary file) holds from its current position to its
        end under ``key``, atomically, reading it in bounded blocks (never whole into memory)."""

    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``. Raises :class:`StorageError` if there are none."""

    def open(self, key: str) -> BinaryIO:
        """A readable, seekable binary file of the bytes under ``key``, for the caller to close
        (``with storage.open(key) as fh``). Raises :class:`StorageError` if there are none."""

    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent. Raises :class:`StorageError` if it cannot."""

    def keys(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every stored key that starts with ``prefix`` (a plain string prefix), with its
        modification time (Unix seconds); lazily, so a large store is never held in memory.

        Includes what writes that never completed left behind (:meth:`LocalStorage.keys`): no
        row names it, so the orphans job deletes it once it is older than ``ORPHAN_GRACE``.
        Raises :class:`StorageError` if the storage cannot be listed."""

    def presigned_url(self, key: str, expires_seconds: int, *, content_type: str,
                      content_disposition: str) -> str | None:
        """A URL that lets whoever holds it ``GET`` the bytes of ``key`` directly from the
        storage for ``expires_seconds`` seconds, answered with these ``Content-Type`` and
        ``Content-Disposition`` headers; ``None`` when the storage cannot make one (a local
        folder: the caller serves the bytes itself). Makes no request and does not check that the
        key exists. Raises :class:`StorageError` when no credentials can be found."""


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
        self._write(key, lambda fh: fh.write(data))

    def put_stream(self, key: str, fileobj: BinaryIO) -> None:
        """Copy ``fileobj`` into a temporary file beside ``key`` in blocks of :data:`COPY_BLOCK`
        bytes, then rename it to ``key``."""
        self._write(key, lambda fh: shutil.copyfileobj(fileobj, fh, COPY_BLOCK))

    def _write(self, key: str, write) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write to a temporary file and rename: a reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        except OSError as exc:
            raise StorageError(f"could not store {key}: {exc.strerror}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"the stored file {key} is missing", transient=False) from None
        except OSError as exc:
            raise StorageError(f"could not read {key}: {exc.strerror}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise StorageError(f"the stored file {key} is missing", transient=False) from None
        except OSError as exc:
            raise StorageError(f"could not read {key}: {exc.strerror}") from exc

    def presigned_url(self, key: str, expires_seconds: int, *, content_type: str,
                      content_disposition: str) -> None:
        """``None``: a folder has no URL of its own; the web process serves the bytes."""
        check_key(key)
        return None

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



def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --- S3-compatible object storage -------------------------------------------------------------

# Multipart transfers: parts of 8 MiB (S3's minimum is 5 MiB), two at a time, at most two more
# read ahead: an upload holds ≈ 4 parts (32 MiB) at most, whatever the file's size.
PART_SIZE = 8 * MB
TRANSFER_CONCURRENCY = 2
# Error codes S3 answers for a key (or the object behind a HEAD) that does not exist.
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _forget_clients_after_fork() -> None:
    """In a forked child (a work horse, a gunicorn worker) the parent's clients and their
    connection pools must not be used: start with none, and a lock nobody holds."""
    global _clients_lock
    _clients.clear()
    _clients_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


def _s3_client(endpoint_url: str | None) -> Any:
    """This process's boto3 S3 client for ``endpoint_url`` (``None``: ``AWS_ENDPOINT_URL``, else
    AWS), made on first use. boto3 reads the credentials and region from its usual variables and
    files; they are part of the cache key by identity only (the access key id, never the secret),
    so a changed environment (a test) gets a new client.

    Raises:
        StorageError: the client cannot be made (a malformed endpoint URL); transient, as the
            storage is unusable until its settings are fixed.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    cache_key = (os.getpid(), endpoint_url, os.environ.get("AWS_ENDPOINT_URL"),
                 os.environ.get("AWS_DEFAULT_REGION"), os.environ.get("AWS_ACCESS_KEY_ID"))
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            try:
                # A session per client: boto3's default session is not thread-safe to create clients from.
                client = boto3.session.Session().client(
                    "s3", endpoint_url=endpoint_url,
                    config=Config(signature_version="s3v4", connect_timeout=5, read_timeout=60,
                                  retries={"mode": "standard", "max_attempts": 3}),
                )
            except (BotoCoreError, ValueError) as exc:  # e.g. a malformed AWS_ENDPOINT_URL or region
                raise StorageError(f"the S3 client could not be set up: {exc}") from exc
            _clients[cache_key] = client
        return client


def s3_client(endpoint_url: str | None = None) -> Any:
    """The process's boto3 S3 client with storage's settings (:func:`_s3_client`): for readers of
    other buckets than ``STORAGE_URL``'s, such as an S3 source (:mod:`jobs.sync_job`).

    Raises:
        StorageError: the client cannot be made (a malformed ``AWS_ENDPOINT_URL`` or region).
    """
    return _s3_client(endpoint_url)


def _s3_error(action: str, key: str, exc: Exception) -> StorageError:
    """A :class:`StorageError` for a boto3/botocore exception: not transient only when the key
    does not exist. The message names the key and S3's error, never a credential."""
    from botocore.exceptions import ClientError

    cause = getattr(exc, "last_exception", None) or exc  # s3transfer wraps the ClientError
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING_CODES or (status == 404 and code not in ("NoSuchBucket",)):
            return StorageError(f"the stored file {key} is missing", transient=False)
        return StorageError(f"could not {action} {key}: {code or status} {error.get('Message', '')}".rstrip())
    return StorageError(f"could not {action} {key}: {exc}")


class S3Storage:
    """Objects in an S3-compatible bucket, under ``prefix``: key ``documents/ab/x`` is object
    ``<prefix>/documents/ab/x``.

    Args:
        bucket: the bucket's name (it must exist; Docket never creates one).
        prefix: a folder-like prefix inside the bucket (no leading or trailing ``/``), or ``""``.
        endpoint_url: the S3 API's URL for an S3-compatible service; ``None``: boto3's own
            choice (``AWS_ENDPOINT_URL``, else AWS).
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url

    @property
    def client(self) -> Any:
        """The boto3 client of this process (made on first use, again after a fork)."""
        return _s3_client(self.endpoint_url)

    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=TRANSFER_CONCURRENCY, io_chunksize=256 * 1024,
                                preferred_transfer_client="classic")
        config.max_in_memory_upload_chunks = TRANSFER_CONCURRENCY
        return config

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._object(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error("store", key, exc) from exc

    def put_stream(self, key: str, fileobj: BinaryIO) -> None:
        """Upload ``fileobj`` with boto3's ``upload_fileobj``: one ``PUT`` up to
        :data:`PART_SIZE` bytes, a multipart upload above (S3 shows the object only once it is
        complete; a failed one is aborted). At most ≈ ``2 × TRANSFER_CONCURRENCY`` parts are held
        in memory at once."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._object(key)
        try:
            self.client.upload_fileobj(fileobj, self.bucket, name, Config=self._transfer_config())
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise _s3_error("store", key, exc) from exc

    def get(self, key: str) -> bytes:
        """The object's bytes, read through :meth:`open`'s temporary file: the whole object is in
        memory once, as the result (tests/core/test_storage_s3.py measures the peak: ≈ its size)."""
        with self.open(key) as fh:
            return fh.read()

    def open(self, key: str) -> BinaryIO:
        """Stream the object (one ``GET``) into a temporary file, in memory up to
        :data:`SPOOL_MAX` bytes and on disk above, and return it rewound: seekable, and never the
        whole object in memory. The caller closes it (the file disappears then)."""
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._object(key)
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX, mode="w+b")
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
            with body:
                for block in body.iter_chunks(COPY_BLOCK):
                    spool.write(block)
            spool.seek(0)
            return spool  # type: ignore[return-value]
        except (BotoCoreError, ClientError) as exc:
            spool.close()
            raise _s3_error("read", key, exc) from exc
        except BaseException:
            spool.close()
            raise

    def delete(self, key: str) -> None:
        """``DeleteObject``; S3 answers success for a key that is absent."""
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._object(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error("delete", key, exc) from exc

    def keys(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every object under this storage's prefix whose key starts with ``prefix``, with its
        ``LastModified`` (Unix seconds), page by page (``ListObjectsV2``, 1,000 keys a page) in
        S3's order (by key). An object whose name is not a valid key was not made by Docket and is
        not listed (so never deleted through this interface)."""
        from botocore.exceptions import BotoCoreError, ClientError

        root = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix)
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(root):]
                    if is_key(key):
                        yield key, item["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error("list", prefix or f"s3://{self.bucket}/{root}", exc) from exc

    def presigned_url(self, key: str, expires_seconds: int, *, content_type: str,
                      content_disposition: str) -> str:
        """A SigV4 presigned ``GetObject`` URL, valid ``expires_seconds`` seconds (SigV4 allows
        at most 7 days), whose answer carries ``content_type`` and ``content_disposition``
        (``ResponseContentType``/``ResponseContentDisposition`` are part of the signature)."""
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._object(key)
        try:
            return self.client.generate_presigned_url(
                "get_object", ExpiresIn=int(expires_seconds),
                Params={"Bucket": self.bucket, "Key": name, "ResponseContentType": content_type,
                        "ResponseContentDisposition": content_disposition})
        except (BotoCoreError, ClientError) as exc:
            raise _s3_error("sign a URL for", key, exc) from exc


def parse_storage_url(url: str) -> tuple[str, str, str]:
    """Split ``STORAGE_URL`` into ``(scheme, location, prefix)``: ``("s3", bucket, prefix)`` or
    ``("file", folder path, "")``.

    Raises:
        ValueError: another scheme, an ``s3://`` URL without a bucket, a ``file:`` URL that is
            not an absolute path, or credentials in the URL (they belong in ``AWS_*`` variables).
            The message never repeats the URL (it could hold a secret).
    """
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError("STORAGE_URL must not hold credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if parts.scheme == "s3":
        if not parts.hostname or parts.query or parts.fragment:
            raise ValueError("STORAGE_URL must look like s3://bucket or s3://bucket/prefix")
        prefix = parts.path.strip("/")
        if prefix and not is_key(prefix):
            raise ValueError("STORAGE_URL's prefix may hold letters, digits and _ - . / only")
        return "s3", parts.netloc, prefix
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("STORAGE_URL must look like file:///absolute/path for a local folder")
        return "file", parts.path, ""
    raise ValueError("STORAGE_URL must start with s3:// (a bucket) or file:// (a local folder)")


def storage_from_config(config: Mapping[str, Any]) -> Storage:
    """The storage ``STORAGE_URL`` names: ``s3://bucket/prefix`` an :class:`S3Storage`,
    ``file:///path`` a :class:`LocalStorage`; unset, the folder ``STORAGE_PATH``. Cheap: it
    connects to nothing (the S3 client is made on first use).

    Raises:
        ValueError: ``STORAGE_URL`` is malformed (:func:`parse_storage_url`).
    """
    url = config.get("STORAGE_URL")
    if not url:
        return LocalStorage(config["STORAGE_PATH"])
    scheme, location, prefix = parse_storage_url(url)
    if scheme == "s3":
        return S3Storage(location, prefix)
    return LocalStorage(location)
