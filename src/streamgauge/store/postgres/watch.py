"""A watch on the store's connections: a statement that hangs because PostgreSQL stopped
answering (a frozen server, a network path that swallows packets while something on the way
still acknowledges them) is ended, so a request gets 503 within seconds instead of waiting
forever.

The server-side statement timeout cannot end such a statement (the server never got it, or
cannot answer), and TCP timeouts do not fire while the peer's kernel (or a proxy) acknowledges
the data. So when a connection has been busy for ``probe_after`` seconds, the watch opens a
new connection and runs ``SELECT 1`` (with the store's connect timeout). If the server answers,
the statement is merely slow (a lock wait, a big read) and is left alone (the statement timeout
bounds it). If it does not, the store is unreachable: every connection busy that long is shut
down under its thread (its blocked read returns, the driver raises a connection error, the
request gets 503 and the transaction is rolled back by the server, or never reached it), and
for ``down_for`` seconds new connections are refused at once rather than each waiting for the
connect timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from streamgauge.domain.errors import Unavailable
from streamgauge.store.postgres.conn import RETRY_AFTER, Conn

log = logging.getLogger("streamgauge.store")
TICK_SECONDS = 0.25


class Watch:
    def __init__(
        self, probe: Callable[[], None], *, probe_after: float = 2.0, down_for: float = 1.0
    ) -> None:
        self._probe = probe  # raises when the server does not answer
        self.probe_after = probe_after
        self.down_for = down_for
        self._busy: dict[object, tuple[Conn, float]] = {}
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._quiet_until = 0.0  # after a probe the server answered: no other one before
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.aborted = 0  # connections shut down (tests, logs)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sg-pg-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @contextlib.contextmanager
    def busy(self, conn: Conn) -> Iterator[None]:
        """``conn`` runs statements for the duration."""
        token = object()
        with self._lock:
            self._busy[token] = (conn, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                del self._busy[token]

    def refuse_if_down(self) -> None:
        """Raise ``Unavailable`` at once if the store was found unreachable a moment ago."""
        if time.monotonic() < self._down_until:
            raise Unavailable(
                "the PostgreSQL store is unreachable (a moment ago; trying again shortly)",
                retry_after=RETRY_AFTER,
            )

    def mark_down(self) -> None:
        self._down_until = time.monotonic() + self.down_for

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            now = time.monotonic()
            if now < self._quiet_until:
                continue
            with self._lock:
                stuck = [c for c, since in self._busy.values() if now - since >= self.probe_after]
            if not stuck:
                continue
            try:
                self._probe()
            except Exception as e:  # the server does not answer: end what waits for it
                self.mark_down()
                with self._lock:
                    still = {id(c) for c, _ in self._busy.values()}
                for conn in stuck:
                    if id(conn) in still:
                        _shut_down(conn)
                        self.aborted += 1
                log.warning(
                    "store: PostgreSQL does not answer (%s); ended %d waiting connection(s)",
                    e,
                    len(stuck),
                )
            else:
                self._quiet_until = time.monotonic() + self.probe_after


def _shut_down(conn: Conn) -> None:
    """Shut the connection's socket down under the thread blocked on it (the socket stays
    open until the driver closes the connection)."""
    try:
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
    except Exception:  # closed meanwhile
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
