"""Role enforcement on the Tapis face, for each role, with grants and revokes through
/v3/streams/roles taking effect at once (the same roles as the native API's)."""

from __future__ import annotations

import httpx
import pytest
from tapipy.errors import BadRequestError, ForbiddenError, NotFoundError
from tapipy.tapis import Tapis

from tests.conftest import Server
from tests.tapis_helpers import account, home, tapis_for

SITE = {
    "site_name": "s",
    "site_id": "s2",
    "latitude": 1,
    "longitude": 2,
    "elevation": 3,
    "description": "d",
}


def setup(server: Server, client: httpx.Client) -> dict[str, Tapis]:
    home(client)
    people = {name: tapis_for(server.url, account(client, "home", name, "user"))
              for name in ("owner", "mgr", "usr", "stranger")}  # fmt: skip
    o = people["owner"].streams
    o.create_project(project_name="shared", owner="owner", pi="owner")
    o.create_site(project_id="shared", request_body=[{**SITE, "site_id": "s1"}])
    o.create_instrument(
        project_id="shared",
        site_id="s1",
        request_body=[{"inst_name": "i", "inst_id": "i1", "inst_description": "d"}],
    )
    o.create_variable(
        project_id="shared", site_id="s1", inst_id="i1", request_body=[{"var_name": "t",
                                                                         "var_id": "t"}]
    )  # fmt: skip
    o.create_measurement(inst_id="i1", vars=[{"datetime": "2024-01-01T00:00:00Z", "t": 1}])
    for name, role in (("mgr", "manager"), ("usr", "user")):
        o.grant_role(user=name, resource_type="project", resource_id="shared", role_name=role)
    return people


def test_each_role(server: Server, client: httpx.Client) -> None:
    people = setup(server, client)
    mgr, usr, stranger = (people[n].streams for n in ("mgr", "usr", "stranger"))

    # user: reads everything, data included, and sees the shared project listed
    assert "shared" in [p.project_id for p in usr.list_projects()]
    assert usr.download_measurements(inst_id="i1").measurements_in_file == 1
    assert usr.list_roles(user="usr", resource_type="project", resource_id="shared").roleNames == [
        "user"
    ]
    with pytest.raises(ForbiddenError):
        usr.create_site(project_id="shared", request_body=[SITE])
    with pytest.raises(ForbiddenError):
        usr.create_measurement(inst_id="i1", vars=[{"datetime": "2024-01-02T00:00:00Z", "t": 2}])
    with pytest.raises(ForbiddenError):
        usr.grant_role(user="stranger", resource_type="project", resource_id="shared",
                       role_name="user")  # fmt: skip

    # manager: writes, may grant manager/user, may not delete or grant admin
    mgr.create_site(project_id="shared", request_body=[SITE])
    mgr.create_measurement(inst_id="i1", vars=[{"datetime": "2024-01-02T00:00:00Z", "t": 2}])
    with pytest.raises(ForbiddenError):
        mgr.delete_site(project_id="shared", site_id="s2")
    with pytest.raises(ForbiddenError):
        mgr.grant_role(user="stranger", resource_type="project", resource_id="shared",
                       role_name="admin")  # fmt: skip
    with pytest.raises(ForbiddenError):
        mgr.grant_role(user="mgr", resource_type="project", resource_id="shared",
                       role_name="user")  # fmt: skip
    with pytest.raises(ForbiddenError):
        mgr.revoke_role(user="usr", resource_type="project", resource_id="shared",
                        role_name="user")  # fmt: skip

    # no role: the project does not exist for you
    assert "shared" not in [p.project_id for p in stranger.list_projects()]
    with pytest.raises(NotFoundError):
        stranger.get_project(project_id="shared")
    with pytest.raises(NotFoundError):
        stranger.download_measurements(inst_id="i1")

    # a grant takes effect at once, on the native face too
    mgr.grant_role(user="stranger", resource_type="project", resource_id="shared",
                   role_name="user")  # fmt: skip
    assert stranger.get_project(project_id="shared").project_id == "shared"
    native = client.get("/api/v1/projects/shared/roles").json()["roles"]
    assert {"account": "stranger", "role": "user"} in native

    # admin: deletes, revokes; a revoke takes effect at once
    owner = people["owner"].streams
    owner.delete_site(project_id="shared", site_id="s2")
    owner.revoke_role(user="stranger", resource_type="project", resource_id="shared",
                      role_name="user")  # fmt: skip
    with pytest.raises(NotFoundError):
        stranger.get_project(project_id="shared")
    with pytest.raises(NotFoundError):
        owner.revoke_role(user="stranger", resource_type="project", resource_id="shared",
                          role_name="user")  # fmt: skip
    with pytest.raises(NotFoundError):
        owner.grant_role(user="nobody", resource_type="project", resource_id="shared",
                         role_name="user")  # fmt: skip
    with pytest.raises(BadRequestError):
        owner.grant_role(user="usr", resource_type="template", resource_id="x",
                         role_name="user")  # fmt: skip


def test_channel_roles_follow_the_project(server: Server, client: httpx.Client) -> None:
    people = setup(server, client)
    owner, usr, mgr = (people[n].streams for n in ("owner", "usr", "mgr"))
    trig = [{"inst_ids": ["i1"], "condition": {"key": "i1.t", "operator": ">", "val": 5},
             "action": {"method": "SLACK", "webhook_url": "http://127.0.0.1:9/x"}}]  # fmt: skip
    with pytest.raises(ForbiddenError):
        usr.create_channels(channel_id="c1", channel_name="c", template_id="t",
                            triggers_with_actions=trig)  # fmt: skip
    mgr.create_channels(channel_id="c1", channel_name="c", template_id="t",
                        triggers_with_actions=trig)  # fmt: skip
    assert [c.channel_id for c in usr.list_channels()] == ["c1"]
    assert usr.list_alerts(channel_id="c1").num_of_alerts == 0
    with pytest.raises(ForbiddenError):
        usr.update_status(channel_id="c1", status="INACTIVE")
    with pytest.raises(ForbiddenError):
        mgr.delete_channel(channel_id="c1")
    with pytest.raises(NotFoundError):
        people["stranger"].streams.get_channel(channel_id="c1")
    owner.delete_channel(channel_id="c1")
    with pytest.raises(NotFoundError):
        owner.get_channel(channel_id="c1")
