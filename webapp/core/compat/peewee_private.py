"""peewee 4.5's private internals that Docket uses (see :mod:`webapp.core.compat`).

* :func:`max_connections` — ``PooledDatabase._max_connections``: the pool's size, for the
  sentence of a 503 when every connection is busy (no public accessor).
* :func:`take_inherited_connections` — the pool's ``_connections``, ``_in_use``, ``_state`` and
  its locks: in a process just forked from one that had connections open (the worker pool forks
  its worker processes), peewee's pool would hand the parent's sockets to the child. Peewee has
  no "after fork" API (``close_all`` would send PostgreSQL's Terminate on the parent's session),
  so the child takes the inherited connections out of the pool without closing them and gets
  fresh locks (another thread of the parent may have held one at the fork).
"""

from __future__ import annotations

import threading
from typing import Any

from playhouse.pool import PooledDatabase


def max_connections(database: PooledDatabase) -> int | None:
    """The most connections ``database``'s pool opens in this process (``None``: no limit)."""
    return database._max_connections


def take_inherited_connections(database: PooledDatabase) -> list[Any]:
    """Empty ``database``'s pool after a fork without closing anything: its idle and in-use
    connections and this thread's current one are returned (each once, for the caller to
    discard safely), and the pool's locks and thread state are new."""
    inherited = [conn for _, _, conn in database._connections]
    inherited += [pooled.connection for pooled in database._in_use.values()]
    if database._state.conn is not None:
        inherited.append(database._state.conn)
    database._connections, database._in_use = [], {}
    database._pool_lock = threading.RLock()
    database._pool_available = threading.Condition(database._pool_lock)
    database._lock = threading.Lock()
    database._state.reset()
    return list({id(conn): conn for conn in inherited}.values())
