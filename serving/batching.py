"""Requests that arrive together go through the models together, with no timer.

Under load, the event loop reads several requests in one turn and starts them all before it runs
anything it was told to run later. Each request is checked on its own (its refusals are its own),
then queued here; the first one queued schedules the run one loop turn later (a ``call_soon``
that calls ``call_soon``): after every request already started has queued, and after the loop
has polled its sockets once more and started what arrived meanwhile, typically the next
requests of the connections the previous run just answered. That turn costs a lone request
microseconds, no timer: a request that arrives alone runs alone, and nothing waits for company
that is not already there. (Run at once, a run took 3.6 of 8 connections' requests; a turn
later, 7.4, and the server answered a third more requests: ``bench/RESULTS.md``.)

One run is one pass of the model stage for all its requests: one online read per feature view,
request-time features in one numpy pass, one call per booster, one hand-off to the prediction
log. That is a request's fixed cost paid once for the batch (``bench/RESULTS.md`` shows how many
requests a run took under load).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

#: What the model stage answers for each job of a run, in order: its result, or the exception its
#: request raises (a refusal of that request only).
Run = Callable[[list[J]], Sequence["R | Exception"]]


class Coalescer(Generic[J, R]):
    """Queue jobs from requests on one event loop; run those queued in one loop turn together.

    ``size(job)``: its rows; a run takes jobs until ``max_rows`` (always at least one), the rest
    go to the next run. ``observe(n)``: told how many jobs each run took (a metric). A run that
    raises is run again job by job: a request that breaks the stage fails alone.
    """

    def __init__(
        self,
        run: Run[J, R],
        size: Callable[[J], int],
        max_rows: int,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._size = size
        self.max_rows = max_rows
        self._observe = observe
        self._pending: list[tuple[J, asyncio.Future[R]]] = []

    async def __call__(self, job: J) -> R:
        """The job's result once its run is done (raises what the run gave it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            loop.call_soon(loop.call_soon, self._flush)  # a turn later: what the next poll reads joins
        self._pending.append((job, future))
        return await future

    def _answers(self, jobs: list[J]) -> Sequence[R | Exception]:
        results = self._run(jobs)
        if len(results) != len(jobs):
            raise RuntimeError(f"the model stage answered {len(results)} of {len(jobs)} requests")
        return results

    def _flush(self) -> None:
        taken, rows = 0, 0
        for job, _ in self._pending:
            rows += self._size(job)
            if taken and rows > self.max_rows:
                break
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        live = [(job, future) for job, future in batch if not future.done()]  # a cancelled request: no work
        if not live:
            return
        if self._observe is not None:
            self._observe(len(live))
        try:
            results = self._answers([job for job, _ in live])
        except Exception as exc:  # noqa: BLE001 -- a fault of the stage, not of one job
            if len(live) == 1:
                live[0][1].set_exception(exc)  # its request's logged 500
                return
            # Whichever request brought it fails alone: the others of the run are answered one by one.
            log.warning("a run of %d requests failed (%r); answering them one by one", len(live), exc)
            results = []
            for job, _ in live:
                try:
                    results.extend(self._answers([job]))
                except Exception as alone:  # noqa: BLE001 -- this request's 500
                    results.append(alone)
        for (_, future), result in zip(live, results, strict=True):
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
