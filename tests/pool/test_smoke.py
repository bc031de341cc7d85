import asyncio

from mailgate.pool import SMTPPool, PoolLimits
from tests.smtp_servers import settings_for


async def test_send_plain(upstream):
    pool = SMTPPool()
    pool.configure("a", settings_for(upstream, limits=PoolLimits(max_connections=2)))
    results = await asyncio.gather(*(pool.send("a", "a@x.org", ["b@y.org"], b"Subject: hi\r\n\r\nbody\r\n") for _ in range(20)))
    assert all(r.code == 250 for r in results)
    assert len(upstream.wait_messages(20)) == 20
    assert upstream.sessions_peak <= 2
    await pool.close_all()
    print(pool.stats())


async def test_starttls_auth(upstream_factory):
    up = upstream_factory(tls="starttls", users={"u": "p"})
    pool = SMTPPool()
    pool.configure("a", settings_for(up))
    r = await pool.send("a", "a@x.org", ["b@y.org"], b"Subject: hi\r\n\r\nbody\r\n")
    assert r.code == 250
    assert up.messages[0].login == "u"
    await pool.close_all()


async def test_implicit_xoauth(upstream_factory):
    up = upstream_factory(tls="implicit", tokens={"u": "tok"})
    pool = SMTPPool()
    pool.configure("a", settings_for(up, auth="xoauth2", username="u", token="tok"))
    r = await pool.send("a", "a@x.org", ["b@y.org"], b"Subject: hi\r\n\r\nbody\r\n")
    assert r.code == 250
    await pool.close_all()
