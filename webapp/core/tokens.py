"""API tokens: create, look up, list and revoke (``flask --app wsgi tokens …``).

A token is ``dkt_`` + 43 URL-safe characters (256 random bits from :mod:`secrets`). It is shown
once, when created; the table keeps only its SHA-256 (:class:`webapp.core.models.ApiToken`), so a
leaked database does not leak usable tokens. Requests send it as ``Authorization: Bearer <token>``
(RFC 6750) or sign the UI in with it (:mod:`webapp.edge.auth`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta


from webapp.core.models import ApiToken, utcnow

TOKEN_PREFIX = "dkt_"
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
LAST_USED_PRECISION = timedelta(minutes=1)  # last_used_at is written at most once a minute per token
LOCAL_ADMIN_NAME = "run command"  # the token the local run command makes at each start


class TokenError(ValueError):
    """A token could not be created or revoked; the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the token's ``owner`` and whether it is an admin."""

    owner: str
    admin: bool
    token_id: str

    def can_see(self, owner: str | None) -> bool:
        """Whether a row of ``owner`` is visible: its own rows, or every row for an admin
        (rows without owner — the system's periodic jobs — only for admins)."""
        return self.admin or (owner is not None and owner == self.owner)


def hash_token(token: str) -> str:
    """Hex SHA-256 of ``token`` (how the table stores it)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(owner: str, name: str = "", admin: bool = False) -> tuple[ApiToken, str]:
    """Create a token for ``owner``.

    Args:
        owner: whose rows the token's requests see: 1–64 letters, digits, ``_.@-``.
        name: what the token is for (shown by ``tokens list``), ≤ 100 characters.
        admin: the token sees every owner's rows, ``/rq`` and ``/api/queues``.

    Returns:
        The saved row and the token itself (shown once; only its hash is stored).

    Raises:
        TokenError: ``owner`` or ``name`` is not valid.
    """
    if not OWNER_PATTERN.match(owner or ""):
        raise TokenError("The owner must be 1–64 letters, digits, '_', '.', '@' or '-', starting with a letter "
                         "or digit.")
    if len(name) > 100:
        raise TokenError("The name must be at most 100 characters.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken.create(owner=owner, name=name or owner, token_hash=hash_token(token),
                          prefix=token[:len(TOKEN_PREFIX) + 4], admin=admin)
    return row, token


def authenticate(token: str) -> Principal | None:
    """The principal of a live (not revoked) ``token``, or ``None``; notes when it was used."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = ApiToken.find_by_hash(hash_token(token))
    return _principal(row)


def principal_for(token_id: str) -> Principal | None:
    """The principal of the live token with id ``token_id`` (a signed-in session's), or ``None``."""
    return _principal(ApiToken.get_or_none(ApiToken.id == token_id))


def _principal(row: ApiToken | None) -> Principal | None:
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_PRECISION:
        ApiToken.update(last_used_at=now).where(ApiToken.id == row.id).execute()
    return Principal(owner=row.owner, admin=row.admin, token_id=row.id)


def revoke_token(token_id_or_prefix: str) -> ApiToken:
    """Revoke one token by its id or its shown prefix (``dkt_AbCd``); its requests and signed-in
    sessions get 401 from then on.

    Raises:
        TokenError: no live token matches, or the prefix matches several.
    """
    live = ApiToken.select().where(ApiToken.revoked_at.is_null())
    matches = list(live.where((ApiToken.id == token_id_or_prefix) | (ApiToken.prefix == token_id_or_prefix)))
    if not matches:
        raise TokenError(f"No live token has the id or prefix {token_id_or_prefix!r}.")
    if len(matches) > 1:
        raise TokenError(f"{len(matches)} tokens have the prefix {token_id_or_prefix!r}; revoke by id.")
    ApiToken.update(revoked_at=utcnow()).where(ApiToken.id == matches[0].id).execute()
    return ApiToken.get_by_id(matches[0].id)


def rotate_local_admin_token(owner: str = "admin") -> str:
    """A fresh admin token for the local run command, revoking the one it made at its previous
    start, so the newcomer always has a working one printed and no old one stays valid.

    Returns:
        The token (plain; only its hash is stored).
    """
    ApiToken.update(revoked_at=utcnow()).where(ApiToken.name == LOCAL_ADMIN_NAME,
                                               ApiToken.revoked_at.is_null()).execute()
    return create_token(owner, LOCAL_ADMIN_NAME, admin=True)[1]
