"""Under `cityml serve --workers N` a reload reaches one worker; the others follow through a shared folder."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from serving.app import create_app, follow_once
from serving.signals import KEEP_S, ReloadSignals
from tests.unit.test_serving_routes import ADMIN, _booster, _state


def test_a_signal_reaches_every_other_worker_once_and_old_ones_are_cleared(tmp_path: Path) -> None:
    before = ReloadSignals(tmp_path)
    before.tell({"eta-old"})
    a, b = ReloadSignals(tmp_path), ReloadSignals(tmp_path)  # started after it: not replayed
    a.tell({"eta-alpha"})
    a.tell(None)
    assert b.news() == [{"eta-alpha"}, None]
    assert b.news() == [] and a.news() == []  # once each, and never one's own
    for path in tmp_path.glob("*.json"):
        old = time.time() - KEEP_S - 1
        os.utime(path, (old, old))
    b.news()
    assert list(tmp_path.glob("*.json")) == []


def test_a_reload_on_one_worker_is_followed_by_the_others(tmp_path: Path) -> None:
    booster = _booster(0)
    one, other = _state(tmp_path / "one", booster), _state(tmp_path / "other", booster)
    one.signals, other.signals = ReloadSignals(tmp_path / "signals"), ReloadSignals(tmp_path / "signals")
    asked: list[Any] = []
    one.models.refresh = lambda only=None: {}  # type: ignore[method-assign]
    other.models.refresh = lambda only=None: asked.append(only) or {"eta-alpha": "v4"}  # type: ignore[method-assign]
    with TestClient(create_app(state=one)) as client:
        assert client.post("/admin/reload", headers={"X-API-Key": ADMIN}).status_code == 200
    asyncio.run(follow_once(other))
    assert asked == [None]
    asyncio.run(follow_once(other))
    assert asked == [None]  # acted on once
    for state in (one, other):
        state.log.close()
