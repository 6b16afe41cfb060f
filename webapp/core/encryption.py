"""Secrets at rest: a PDF's password is stored encrypted while its job waits.

Fernet (``cryptography``: AES-128-CBC with an HMAC-SHA256, authenticated) with a key derived
from the app's ``SECRET_KEY`` by HKDF-SHA256, so the database alone does not reveal a password.
After a key rotation the old keys in ``SECRET_KEY_FALLBACKS`` still decrypt (``MultiFernet``).
The row's copy is deleted when its job reaches a terminal state (:mod:`webapp.core.protocol.states`).
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_PURPOSE = b"docket: PDF passwords at rest"


class DecryptionError(Exception):
    """A stored secret could not be decrypted: it was encrypted with a key that is neither
    ``SECRET_KEY`` nor one of ``SECRET_KEY_FALLBACKS``, or it was altered."""


def _fernet(secret_key: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _keys(config: Mapping[str, Any]) -> MultiFernet:
    return MultiFernet([_fernet(config["SECRET_KEY"]),
                        *(_fernet(key) for key in config.get("SECRET_KEY_FALLBACKS") or ())])


def encrypt_secret(config: Mapping[str, Any], plaintext: str) -> str:
    """``plaintext`` encrypted with the current ``SECRET_KEY``: an ASCII Fernet token (about
    1.4 × the text's UTF-8 length + 100 characters), different on every call."""
    return _keys(config).encrypt(plaintext.encode()).decode("ascii")


def decrypt_secret(config: Mapping[str, Any], token: str) -> str:
    """The text :func:`encrypt_secret` encrypted.

    Raises:
        DecryptionError: no configured key decrypts ``token`` (see the class).
    """
    try:
        return _keys(config).decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError) as exc:
        raise DecryptionError("the stored secret could not be decrypted with SECRET_KEY or "
                              "SECRET_KEY_FALLBACKS (was the key changed?)") from exc
