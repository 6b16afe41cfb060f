"""``flask --app wsgi tokens create|list|revoke``: API tokens from the command line (the tokens
themselves: :mod:`webapp.core.tokens`)."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from webapp.core.db import connection
from webapp.core.models import ApiToken
from webapp.core.tokens import TokenError, create_token, revoke_token


@click.group("tokens")
def tokens_cli() -> None:
    """API tokens: create, list, revoke."""


@tokens_cli.command("create")
@click.argument("owner")
@click.option("--name", default="", help="What the token is for, shown by 'tokens list' (default: OWNER).")
@click.option("--admin", is_flag=True, help="Sees every owner's rows, the dashboard (/rq) and /api/queues.")
@with_appcontext
def create_command(owner: str, name: str, admin: bool) -> None:
    """Create a token for OWNER and print it (once: only its hash is stored)."""
    with connection():
        try:
            row, token = create_token(owner, name, admin)
        except TokenError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(token)
    click.echo(f"created token {row.id} ({row.prefix}…) for owner {row.owner}{' (admin)' if admin else ''}; "
               "it is not shown again", err=True)


@tokens_cli.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also revoked tokens.")
@with_appcontext
def list_command(show_all: bool) -> None:
    """List tokens (id, prefix, owner, name, admin, created, last used, revoked)."""
    with connection():
        query = ApiToken.select().order_by(ApiToken.created_at)
        if not show_all:
            query = query.where(ApiToken.revoked_at.is_null())
        rows = list(query)
    click.echo("\t".join(("id", "prefix", "owner", "name", "admin", "created_at", "last_used_at", "revoked_at")))
    for row in rows:
        click.echo("\t".join(str(value) if value is not None else "-" for value in (
            row.id, row.prefix, row.owner, row.name, "yes" if row.admin else "no", row.created_at,
            row.last_used_at, row.revoked_at)))


@tokens_cli.command("revoke")
@click.argument("token_id_or_prefix")
@with_appcontext
def revoke_command(token_id_or_prefix: str) -> None:
    """Revoke the token with this id or prefix."""
    with connection():
        try:
            row = revoke_token(token_id_or_prefix)
        except TokenError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(f"revoked token {row.id} ({row.prefix}…) of owner {row.owner}")
