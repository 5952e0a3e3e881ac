"""Starting a fan-out worker process: the part of ``Workers`` that needs no engine.

``serve --workers N`` on an existing database starts its workers with this before it imports
the app (``cli._serve``): a worker's imports and registry load then run on another core while
the writer does its own, not after them. ``Workers`` adopts the workers started so
(``Workers.start``) and starts a worker again with the same function when one exits.
Standard library only: importing this module must cost nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Launched:
    """A worker process just started, and this process's ends of its two sockets: the bus
    (``bus/local.py``) and the hand-off of connections (``SCM_RIGHTS``)."""

    number: int
    proc: subprocess.Popen[bytes]
    bus: socket.socket
    handoff: socket.socket


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn``: the worker gets SIGTERM when this process dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def launch(n: int, *, count: int, host: str, port: int, data: Path, feed: bool) -> Launched:
    """Start worker ``n`` of ``count`` serving processes (``python -m streamgauge.workers``)."""
    bus, bus_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    hand, hand_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    args = [
        sys.executable,
        "-m",
        "streamgauge.workers",
        "--worker",
        str(n),
        "--host",
        host,
        "--port",
        str(port),
        "--data",
        str(data),
        "--bus-fd",
        str(bus_child.fileno()),
        "--handoff-fd",
        str(hand_child.fileno()),
        "--count",
        str(count),
        *(["--feed"] if feed else []),
    ]
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            pass_fds=(bus_child.fileno(), hand_child.fileno()),
            preexec_fn=die_with_parent(),
        )
    except BaseException:
        bus.close()
        hand.close()
        raise
    finally:
        bus_child.close()
        hand_child.close()
    return Launched(n, proc, bus, hand)
