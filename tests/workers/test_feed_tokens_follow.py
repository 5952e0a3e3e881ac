"""Feed tokens followed by another process's feed store (``store/sqlite/feeds.py``): the
writer's token transactions carry ``FeedTokenPut`` / ``FeedTokenDropped`` events; a store that
follows them knows a new token, and closes a revoked one's connections; one that missed events
reloads the tokens (dropping the revoked); a token another process owns is refused."""

from __future__ import annotations

from pathlib import Path

from streamgauge.domain import events as ev
from streamgauge.store.sqlite.feeds import FeedStore
from tests.store.test_face_state import make_projects, open_store


async def test_token_events_followed_and_reloaded_and_ownership(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await make_projects(store, "p")
    project_pk = store.registry.projects["p"].pk
    heard: list[ev.MetaEvent] = []
    store.on_events = lambda first, last, events: heard.extend(events)
    writer = FeedStore(store, 3600)
    other = FeedStore(store, 3600)  # another process's, over the same database
    other.owns = lambda digest: True
    try:
        await writer.start()
        await other.start()
        tok, secret = await writer.create_token(project_pk, "kiosk")
        assert other.token_for(secret) is None
        assert [type(e) for e in heard] == [ev.FeedTokenPut]
        assert secret not in ev.encode(heard[0]).decode()  # the digest travels, not the secret
        for e in heard:
            other.follow(e)
        assert other.token_for(secret) == tok
        closed: list[str] = []
        other.attach(tok, closed.append)
        heard.clear()
        await writer.revoke(project_pk, tok.id)
        assert heard == [ev.FeedTokenDropped(tok.pk)]
        other.follow(heard[0])
        assert closed == ["feed token revoked"]
        assert other.token_for(secret) is None

        # Events missed: a token made, one known then revoked: a reload puts it right.
        known, known_secret = await writer.create_token(project_pk, "known")
        other.follow(heard[-1])
        assert other.token_for(known_secret) == known
        other.attach(known, closed.append)
        await writer.revoke(project_pk, known.id)
        made, made_secret = await writer.create_token(project_pk, "made")
        await other.reload_tokens()
        assert other.token_for(made_secret) == made
        assert other.token_for(known_secret) is None
        assert closed == ["feed token revoked", "feed token revoked"]

        # A token this process does not own is refused (another process serves it).
        other.owns = lambda digest: False
        assert other.token_for(made_secret) is None
        assert writer.token_for(made_secret) == made
    finally:
        await other.stop()
        await writer.stop()
        await store.close()
