"""Fixtures of the MQTT tests: the machine's Mosquitto on 127.0.0.1:1883 (a missing broker
fails the tests when CI is set), paho-mqtt clients, and a topic prefix of each test's own so
tests sharing the broker never see each other's messages."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

BROKER = ("127.0.0.1", 1883)
BROKER_URL = "mqtt://127.0.0.1:1883"


@pytest.fixture(scope="session")
def broker() -> str:
    try:
        socket.create_connection(BROKER, timeout=5).close()
    except OSError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no MQTT broker on {BROKER[0]}:{BROKER[1]}: {exc}")
        pytest.skip(f"no MQTT broker on {BROKER[0]}:{BROKER[1]}")
    return BROKER_URL


@pytest.fixture
def prefix() -> str:
    return "sgtest-" + uuid.uuid4().hex[:10]


def paho_client(**kw: Any) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, **kw)
    client.connect(*BROKER)
    client.loop_start()
    return client


@pytest.fixture
def publisher(broker: str) -> Iterator[mqtt.Client]:
    client = paho_client()
    yield client
    client.loop_stop()
    client.disconnect()


def wait_for(check: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll ``check`` until it holds (a generous bound: the machine is busy)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
