"""DT's ``devices:transfer`` (``Engine.transfer_device``): a moved device keeps its variables and
stored observations, which now belong to the target project; it loses its site; a clash of ids
and an unknown device are per-device errors; the move survives a restart."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import make_station, rows, start_server


def test_transfer_moves_a_device_and_its_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start_server(data)
    try:
        with srv.client() as c:
            make_station(c, "p1")
            assert c.post("/api/v1/projects", json={"id": "p2"}).status_code == 201
            r = c.post("/api/v1/projects/p1/observations", json=rows(6))
            assert r.status_code == 200, r.text
            r = c.post(
                "/v2/projects/p2/devices:transfer",
                json={
                    "devices": [
                        "projects/p1/devices/d0",
                        "projects/p1/devices/nope",
                        "projects/p2/devices/d1",
                    ]
                },
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["transferredDevices"] == ["projects/p2/devices/d0"]
            assert [e["status"]["code"] for e in body["transferErrors"]] == [404, 404]
            moved = c.get("/api/v1/projects/p2/devices/d0")
            assert moved.status_code == 200, moved.text
            assert moved.json()["site"] is None
            assert c.get("/api/v1/projects/p1/devices/d0").status_code == 404
            p1 = c.get("/api/v1/projects/p1/observations").json()["observations"]
            p2 = c.get("/api/v1/projects/p2/observations").json()["observations"]
            assert {o["device"] for o in p1} == {"d1"}
            assert {o["device"] for o in p2} == {"d0"}
            assert len(p1) + len(p2) == 6
            # d1 of p1 cannot follow into p2... once p2 has a d1 of its own: a 409 per device.
            r = c.post("/api/v1/projects/p2/devices", json=[{"id": "d1"}])
            assert r.status_code == 201, r.text
            r = c.post(
                "/v2/projects/p2/devices:transfer", json={"devices": ["projects/p1/devices/d1"]}
            )
            assert r.json()["transferredDevices"] == []
            assert r.json()["transferErrors"][0]["status"]["code"] == 409
    finally:
        srv.stop()
    srv = start_server(data)  # the registry read back from the database agrees
    try:
        with srv.client() as c:
            assert c.get("/api/v1/projects/p2/devices/d0").status_code == 200
            assert c.get("/api/v1/projects/p1/devices/d0").status_code == 404
            p2 = c.get("/api/v1/projects/p2/observations").json()["observations"]
            assert {o["device"] for o in p2} == {"d0"}
    finally:
        srv.stop()
