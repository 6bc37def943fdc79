"""Reloads told to the other workers of ``cityml serve --workers N``.

A registry webhook or ``POST /admin/reload`` reaches one worker. That worker reloads, then drops a
small file in a folder all workers share (``CITYML_RELOAD_SIGNALS``, made by ``cityml serve``);
every worker looks at the folder each second and reloads what the files name. Without the
folder (one worker) nothing is written or watched.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

#: Set by ``cityml serve --workers N`` (N > 1) to the shared folder.
SIGNALS_ENV = "CITYML_RELOAD_SIGNALS"
#: A signal file older than this is removed by whichever worker sees it (every worker has by then).
KEEP_S = 60.0


class ReloadSignals:
    """One worker's view of the shared folder: what it told, and what it has already acted on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._seen = {p.name for p in folder.glob("*.json")}  # what came before this worker started

    def tell(self, names: set[str] | None) -> None:
        """Tell the others to reload ``names`` (None: every model). This worker has already."""
        name = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(json.dumps({"names": sorted(names) if names is not None else None}))
        os.replace(tmp, self.folder / name)  # whole or not at all, for a worker looking now
        self._seen.add(name)

    def news(self) -> list[set[str] | None]:
        """What other workers told since the last look, oldest first; old files are cleared."""
        out: list[set[str] | None] = []
        now = time.time()
        for path in sorted(self.folder.glob("*.json")):
            if path.name in self._seen:
                try:
                    if now - path.stat().st_mtime > KEEP_S:
                        path.unlink(missing_ok=True)
                        self._seen.discard(path.name)
                except OSError:
                    pass
                continue
            self._seen.add(path.name)
            try:
                names = json.loads(path.read_text())["names"]
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("reload signal %s unreadable: reloading everything", path.name)
                names = None
            out.append(set(names) if names is not None else None)
        return out


def from_env() -> ReloadSignals | None:
    folder = os.environ.get(SIGNALS_ENV)
    return ReloadSignals(Path(folder)) if folder else None
