async def test_versions_and_login(server):
    resp = await server.get("/_matrix/client/versions")
    assert resp.status == 200
    assert "v1.1" in resp.body["versions"]
    reg = await server.register_user("alice")
    assert reg["user_id"] == "@alice:test.local"
    login = await server.login("Alice")
    who = await server.get("/_matrix/client/v3/account/whoami", token=login["access_token"])
    assert who.status == 200 and who.body["user_id"] == "@alice:test.local"
