"""End to end with matrix-nio: an independent, real Matrix client library.

nio talks to the running server (both engines) over HTTP exactly as it would
to Synapse, and checks the responses against its own JSON schemas, so these
tests catch answers that our own tests would accept but real clients reject.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import nio
import pytest
from nio import AsyncClient, AsyncClientConfig

if TYPE_CHECKING:
    from ..conftest import TestServer

PASSWORD = "a long enough password"


def _client(server: TestServer, user: str = "") -> AsyncClient:
    # No encryption store: these tests are about accounts, not E2EE.
    config = AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False)
    return AsyncClient(server.url, user, config=config)


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[AsyncClient]:
    c = _client(server)
    try:
        yield c
    finally:
        await c.close()


async def test_account_lifecycle(server: TestServer, client: AsyncClient) -> None:
    # Discovery, as a client does before signing in.
    versions = await client.discovery_info()
    assert isinstance(versions, nio.DiscoveryInfoResponse), versions
    assert versions.homeserver_url
    login_info = await client.login_info()
    assert isinstance(login_info, nio.LoginInfoResponse), login_info
    assert "m.login.password" in login_info.flows

    # Registration: nio completes the m.login.dummy UIA stage itself.
    registered = await client.register("niouser", PASSWORD, device_name="nio registration")
    assert isinstance(registered, nio.RegisterResponse), registered
    assert registered.user_id == "@niouser:test.local"
    assert registered.access_token and registered.device_id
    # nio is signed in with the registration's token. (Using it also gives the
    # device a last-seen IP; see test_devices_without_display_names.)
    who = await client.whoami()
    assert isinstance(who, nio.WhoamiResponse), who
    assert (who.user_id, who.device_id) == (registered.user_id, registered.device_id)

    # A second registration of the same name is refused as clients expect.
    other = _client(server)
    try:
        taken = await other.register("niouser", PASSWORD)
        assert isinstance(taken, nio.responses.RegisterErrorResponse), taken
        assert taken.status_code == "M_USER_IN_USE"
    finally:
        await other.close()

    # Password login as a fresh client.
    c = _client(server, "niouser")
    try:
        wrong = await c.login("not the password", device_name="nio")
        assert isinstance(wrong, nio.LoginError), wrong
        assert wrong.status_code == "M_FORBIDDEN"

        login = await c.login(PASSWORD, device_name="nio login")
        assert isinstance(login, nio.LoginResponse), login
        assert login.user_id == "@niouser:test.local"
        assert login.device_id and login.device_id != registered.device_id
        assert c.logged_in

        who = await c.whoami()
        assert isinstance(who, nio.WhoamiResponse), who
        assert who.user_id == "@niouser:test.local"
        assert who.device_id == login.device_id
        assert who.is_guest is False

        # The display name defaults to the localpart, then changes.
        name = await c.get_displayname()
        assert isinstance(name, nio.ProfileGetDisplayNameResponse), name
        assert name.displayname == "niouser"
        set_name = await c.set_displayname("Nio User \u2603")
        assert isinstance(set_name, nio.ProfileSetDisplayNameResponse), set_name
        name = await c.get_displayname()
        assert isinstance(name, nio.ProfileGetDisplayNameResponse), name
        assert name.displayname == "Nio User \u2603"
        profile = await c.get_profile()
        assert isinstance(profile, nio.ProfileGetResponse), profile
        assert profile.displayname == "Nio User \u2603"
        assert profile.avatar_url is None
        # Another user sees the same profile.
        seen = await client.get_profile("@niouser:test.local")
        assert isinstance(seen, nio.ProfileGetResponse), seen
        assert seen.displayname == "Nio User \u2603"

        devices = await c.devices()
        assert isinstance(devices, nio.DevicesResponse), devices
        by_id = {d.id: d for d in devices.devices}
        assert set(by_id) == {registered.device_id, login.device_id}
        assert by_id[login.device_id].display_name == "nio login"
        assert by_id[registered.device_id].display_name == "nio registration"

        token = c.access_token
        out = await c.logout()
        assert isinstance(out, nio.LogoutResponse), out
        assert not c.logged_in
        # The token is dead on the server, not just forgotten by the client.
        c.access_token = token
        who = await c.whoami()
        assert isinstance(who, nio.WhoamiError), who
        assert who.status_code == "M_UNKNOWN_TOKEN"
    finally:
        await c.close()

    # The registration device is still signed in, and sees one device now.
    devices = await client.devices()
    assert isinstance(devices, nio.DevicesResponse), devices
    assert [d.id for d in devices.devices] == [registered.device_id]


async def test_devices_without_display_names(server: TestServer, client: AsyncClient) -> None:
    # nio sends no initial_device_display_name when none is given, and a
    # device that has not made a request yet has no last-seen IP; listing
    # such devices must still work.
    registered = await client.register("nameless", PASSWORD)
    assert isinstance(registered, nio.RegisterResponse), registered
    unused = await server.login("nameless", PASSWORD)
    devices = await client.devices()
    assert isinstance(devices, nio.DevicesResponse), devices
    by_id = {d.id: d for d in devices.devices}
    assert set(by_id) == {registered.device_id, unused["device_id"]}
    assert by_id[registered.device_id].display_name is None
    assert by_id[unused["device_id"]].last_seen_ip is None


async def test_logout_all(server: TestServer, client: AsyncClient) -> None:
    registered = await client.register("leaver", PASSWORD, device_name="one")
    assert isinstance(registered, nio.RegisterResponse), registered
    second = _client(server, "leaver")
    try:
        login = await second.login(PASSWORD, device_name="two")
        assert isinstance(login, nio.LoginResponse), login
        out = await second.logout(all_devices=True)
        assert isinstance(out, nio.LogoutResponse), out
    finally:
        await second.close()
    who = await client.whoami()
    assert isinstance(who, nio.WhoamiError), who
    assert who.status_code == "M_UNKNOWN_TOKEN"
