"""The coalescer: what arrives in one loop turn runs together, a lone job waits for nothing, a job's
refusal stays its own, a fault of the stage reaches every job of its run, and runs are bounded in rows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from serving.batching import Coalescer


class Stage:
    """A model stage that doubles numbers, refuses negative ones, breaks on 13 and records its runs."""

    def __init__(self) -> None:
        self.runs: list[list[int]] = []

    def __call__(self, jobs: list[int]) -> Sequence[int | Exception]:
        self.runs.append(list(jobs))
        if 13 in jobs:
            raise RuntimeError("the stage broke")
        return [ValueError(f"refused {j}") if j < 0 else 2 * j for j in jobs]


def _coalescer(stage: Stage, max_rows: int = 1000) -> tuple[Coalescer[int, int], list[int]]:
    seen: list[int] = []
    return Coalescer(stage, size=lambda j: abs(j), max_rows=max_rows, observe=seen.append), seen


def test_jobs_queued_together_run_together_and_a_lone_job_runs_alone() -> None:
    stage = Stage()
    run, seen = _coalescer(stage)

    async def go() -> tuple[list[int], int]:
        together = await asyncio.gather(*(run(j) for j in (1, 2, 3, 4)))
        alone = await run(5)
        return list(together), alone

    assert asyncio.run(go()) == ([2, 4, 6, 8], 10)
    assert stage.runs == [[1, 2, 3, 4], [5]] and seen == [4, 1]


def test_a_job_started_in_the_next_loop_turn_joins_the_run() -> None:
    """The run waits one loop turn, no timer: a request the next socket poll starts still joins it."""
    stage = Stage()
    run, seen = _coalescer(stage)

    async def go() -> list[int]:
        first = asyncio.ensure_future(run(1))
        await asyncio.sleep(0)  # the first job queued and its run scheduled
        second = asyncio.ensure_future(run(2))  # started a turn later, as the next request read would be
        return list(await asyncio.gather(first, second))

    assert asyncio.run(go()) == [2, 4]
    assert stage.runs == [[1, 2]] and seen == [2]


def test_a_refusal_reaches_its_job_only_and_a_job_that_breaks_the_stage_fails_alone() -> None:
    stage = Stage()
    run, seen = _coalescer(stage)

    async def go(jobs: tuple[int, ...]) -> list[object]:
        return list(await asyncio.gather(*(run(j) for j in jobs), return_exceptions=True))

    first = asyncio.run(go((1, -2, 3)))
    assert first[0] == 2 and isinstance(first[1], ValueError) and first[2] == 6
    second = asyncio.run(go((1, 13, 3)))
    assert second[0] == 2 and isinstance(second[1], RuntimeError) and second[2] == 6
    assert stage.runs[1:] == [[1, 13, 3], [1], [13], [3]]  # the run, then each of its jobs alone
    assert seen == [3, 3]
    assert asyncio.run(go((13,)))[0].__class__ is RuntimeError  # alone, it is its own 500


def test_a_run_holds_at_most_max_rows_and_always_one_job() -> None:
    stage = Stage()
    run, _ = _coalescer(stage, max_rows=1000)

    async def go() -> list[int]:
        return list(await asyncio.gather(run(600), run(600), run(300), run(5000)))

    assert asyncio.run(go()) == [1200, 1200, 600, 10000]
    assert stage.runs == [[600], [600, 300], [5000]]


def test_a_cancelled_request_costs_the_stage_nothing() -> None:
    stage = Stage()
    run, _ = _coalescer(stage)

    async def go() -> int:
        gone = asyncio.ensure_future(run(7))
        kept = asyncio.ensure_future(run(8))
        await asyncio.sleep(0)  # both queued
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await kept

    assert asyncio.run(go()) == 16
    assert stage.runs == [[8]]
