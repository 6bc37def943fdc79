"""The models that answer get their trees flattened for the compiled loop, in the background.

Flattening a six-booster model (``LoadedModel.flatten``: its text, the flat arrays, the check
against LightGBM on probe rows) takes two to three seconds and holds about 1.6 MB. Doing it for every
loaded model would add minutes to a 2,000-model start and gigabytes to its memory; most cities'
models may not be asked for. So a model is flattened the first time it answers, in one background
thread, one model at a time, up to ``CITYML_FLAT_MODELS`` models held at once; until it is done,
past that bound, and for a model the loop cannot stand in for (it says why, logged once),
LightGBM answers. The answers are the same either way, bit for bit.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import weakref

from cityml.registry import LoadedModel
from cityml.trees import Unsupported

log = logging.getLogger(__name__)


class HotTrees:
    """Flattens models asked for with :meth:`want`, each once, in a thread started on first use."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit  # models flattened at once at most (those replaced since do not count)
        self._asked: dict[int, weakref.ref[LoadedModel]] = {}  # by id (a LoadedModel is not hashable)
        # A model to flatten, an event to set once all before it are done, or None: stop.
        self._queue: queue.SimpleQueue[LoadedModel | threading.Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.flattened = 0
        self.unsupported = 0

    def want(self, model: LoadedModel) -> None:
        """Have ``model`` (and its base) flattened; nothing happens if it is, or is on its way."""
        for m in (model, model.base):
            if m is None or m.flat is not None:
                continue
            asked = self._asked.get(id(m))
            if asked is not None and asked() is m:
                continue
            if len(self._asked) >= self.limit:
                continue
            self._asked[id(m)] = weakref.ref(m, functools.partial(self._forget, id(m)))
            self._put(m)

    def _forget(self, key: int, gone: weakref.ref[LoadedModel]) -> None:
        """A model was replaced and freed: it no longer counts, and its id may come back."""
        if self._asked.get(key) is gone:
            del self._asked[key]

    def wait(self, timeout_s: float = 120.0) -> bool:
        """Until every model asked for so far is flattened or refused (tests, the bench)."""
        done = threading.Event()
        self._put(done)
        return done.wait(timeout_s)

    def close(self) -> None:
        """Stop: the model being flattened is finished, those still queued are not."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(30)

    def _put(self, item: LoadedModel | threading.Event) -> None:
        with self._lock:
            if self._closed:  # a closed server flattens nothing more; a wait has nothing to wait for
                if isinstance(item, threading.Event):
                    item.set()
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cityml-hot-trees", daemon=True)
                self._thread.start()
            self._queue.put(item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
            elif item is None or self._closed:
                break
            else:
                self._flatten(item)
            item = None  # not kept alive while waiting for the next one
        while not self._queue.empty():  # closed: what still waits is dropped; a wait is told
            if isinstance(left := self._queue.get(), threading.Event):
                left.set()

    def _flatten(self, model: LoadedModel) -> None:
        try:
            model.flat = model.flatten()
            self.flattened += 1
        except Unsupported as exc:
            self.unsupported += 1
            log.info("%s v%s stays on LightGBM: %s", model.name, model.version, exc)
        except Exception:
            self.unsupported += 1
            log.exception("flattening %s v%s failed; LightGBM answers for it", model.name, model.version)
