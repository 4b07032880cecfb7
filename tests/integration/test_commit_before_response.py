"""A write is answered only once its transaction has committed: a commit that fails is
never reported to the client as a success."""

from __future__ import annotations

import asyncpg
import httpx

from tests.conftest import Stack


async def test_a_write_whose_commit_fails_is_not_answered_200(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    device_id = (await stack.device(admin))["device_id"]
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        # A deferred constraint trigger runs at COMMIT, after the handler has returned.
        await conn.execute(
            """CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                   IF NEW.patch ? 'refused_at_commit' THEN
                       RAISE EXCEPTION 'refused at commit';
                   END IF;
                   RETURN NULL;
               END $$;
               CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON twin_history
                   DEFERRABLE INITIALLY DEFERRED
                   FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();"""
        )
    finally:
        await conn.close()
    transport = httpx.ASGITransport(stack.ui_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ui") as client:
        refused = await client.patch(
            f"/customer/devices/{device_id}/twin/desired",
            json={"desired": {"refused_at_commit": True}},
            headers=admin,
        )
        assert refused.status_code == 500, refused.text
        accepted = await client.patch(
            f"/customer/devices/{device_id}/twin/desired",
            json={"desired": {"fine": True}},
            headers=admin,
        )
        assert accepted.status_code == 200, accepted.text
    twin = (await stack.ui.get(f"/customer/devices/{device_id}/twin", headers=admin)).json()
    assert (twin["desired"], twin["desired_version"]) == ({"fine": True}, 1)
