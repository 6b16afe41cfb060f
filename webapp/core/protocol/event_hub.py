"""One process's subscription to every live job event, fanned out to the streams that listen
(the web process's Server-Sent Events, :mod:`webapp.edge.sse`). Publishing is
:func:`webapp.core.protocol.events.publish`; this is the other end.
"""

from __future__ import annotations

import logging
import queue
import threading

from redis import Redis
from redis.exceptions import RedisError

from webapp.core.protocol.events import CHANNEL_PREFIX

log = logging.getLogger(__name__)


class EventHub:
    """One process's single pub/sub subscription to every job event, fanned out to its streams.

    A background thread (started on the first stream, so after gunicorn's fork) holds one Redis
    connection ``PSUBSCRIBE docket:events:*`` and hands each message to the :class:`Listener`
    queues of its channel. So a web process holds one Redis connection for any number of streams
    — managed Redis plans limit clients (tens on small plans), and redis-py's pool to 100 — and a
    stream that starts listens on a subscription Redis has already confirmed.

    When the subscription breaks (Redis restarted; redis-py reconnects and subscribes again),
    messages of the gap are lost: every listener then gets ``None`` and its stream ends, and the
    clients reconnect and read the current state again.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._lock = threading.Lock()
        self._listeners: dict[str, set[queue.SimpleQueue]] = {}
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def listen(self, channel: str) -> "Listener":
        """A listener of ``channel``, registered on a subscription Redis confirmed.

        Raises:
            RedisError: the subscription is not confirmed within 5 s (Redis unreachable).
        """
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._ready.clear()
                self._thread = threading.Thread(target=self._run, name="docket-job-events", daemon=True)
                self._thread.start()
        if not self._ready.wait(5):
            raise RedisError("the subscription to job events was not confirmed within 5 s")
        listener = Listener(self, channel)
        with self._lock:
            self._listeners.setdefault(channel, set()).add(listener.queue)
        return listener

    def leave(self, listener: "Listener") -> None:
        """Stop delivering to ``listener`` (idempotent)."""
        with self._lock:
            targets = self._listeners.get(listener.channel)
            if targets is not None:
                targets.discard(listener.queue)
                if not targets:
                    del self._listeners[listener.channel]

    def listeners(self) -> int:
        """How many listeners are registered now (open streams of this process)."""
        with self._lock:
            return sum(len(targets) for targets in self._listeners.values())

    def _run(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
            while True:
                message = pubsub.get_message(timeout=5.0)
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    if self._ready.is_set():  # subscribed again after a reconnection: a gap
                        self.end_all()
                    self._ready.set()
                elif message["type"] == "pmessage":
                    channel = message["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    with self._lock:
                        targets = list(self._listeners.get(channel, ()))
                    for target in targets:
                        target.put(message["data"])
        except Exception as exc:  # the thread ends; the next stream starts a new one
            log.warning("the subscription to live job events failed: %s", exc)
        finally:
            self._ready.clear()
            self.end_all()
            try:
                pubsub.close()
            except Exception:
                pass

    def end_all(self) -> None:
        """End every stream of this process (without ``end``): their clients reconnect and read the
        state again. Called when the subscription broke and when the worker shuts down."""
        with self._lock:
            targets = [target for queues in self._listeners.values() for target in queues]
        for target in targets:
            target.put(None)


class Listener:
    """One stream's registration with the :class:`EventHub`: :attr:`queue` receives the raw
    messages of :attr:`channel` (``None``: the subscription broke). :meth:`close` unregisters."""

    def __init__(self, hub: EventHub, channel: str) -> None:
        self.hub, self.channel = hub, channel
        self.queue: queue.SimpleQueue = queue.SimpleQueue()

    def close(self) -> None:
        self.hub.leave(self)
