"""A predict request's two stages: its instances checked (:func:`prepare`), then the models (:func:`answer`).

:func:`prepare` runs per request and refuses what cannot be answered, naming the field: an unknown
city or zone, a point outside the city, a city of another shard, no model. :func:`answer` runs once
for every request a :class:`serving.batching.Coalescer` run took: per model, the trip rows of all
of them, built once → request-time and online feature columns (``cityml.features.online.model_columns``, the code
parity checks) → ``LoadedModel.predict_columns`` → each request's values, and its records queued
for the prediction log (written off the request path). A request's answer does not depend on
which others shared its run: every step is row by row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from fastapi import HTTPException, status

from cityml.catalog import CityContext
from cityml.features.online import model_columns
from cityml.features.request_features import TripRows
from cityml.naming import Target
from cityml.prediction_log import PredictionBatch, epoch_us
from serving.features import RequestError, known_zones, place, trip_rows
from serving.model_store import Served
from serving.schemas import TripRequest

if TYPE_CHECKING:
    from serving.state import AppState


@dataclass
class Job:
    """One request's instances, checked, with the model that answers each and their zones."""

    request_id: str
    now: datetime
    target: Target
    instances: list[TripRequest]
    served_by: list[Served]
    fallbacks: list[str | None]
    pickup_zones: list[str]
    dropoff_zones: list[str]

    def __len__(self) -> int:
        return len(self.instances)


@dataclass
class Answer:
    """A request's predictions in its instances' order, and which were made with online values missing."""

    values: np.ndarray
    degraded: np.ndarray


def refuse(state: AppState, code: int, index: int, field: str, message: str, reason: str) -> HTTPException:
    """The refusal of a request for its instance ``index``'s ``field``, counted by reason."""
    state.metrics.errors.labels(reason).inc()
    return HTTPException(code, detail=[{"loc": ["body", "instances", index, field], "msg": message, "type": reason}])


def prepare(state: AppState, target: Target, instances: list[TripRequest], request_id: str, now: datetime) -> Job:
    """Which model answers each instance, and its trip row; raises the refusal of the first that cannot be."""
    catalog = state.models.catalog
    per_city: dict[str, tuple[Served, str | None, frozenset[str] | None]] = {}  # once per city of the request
    served_by: list[Served] = []
    fallbacks: list[str | None] = []
    zones: list[frozenset[str] | None] = []
    for i, inst in enumerate(instances):
        hit = per_city.get(inst.city)
        if hit is None:
            if inst.city not in catalog:
                raise refuse(state, 422, i, "city", f"unknown city {inst.city[:40]!r}", "unknown_city")
            if not state.models.owns(inst.city):  # a sharded fleet: the proxy routes by X-City
                shard = state.models.shard_of(inst.city)
                message = f"{inst.city!r} is served by shard {shard}: send X-City: {inst.city} through the proxy"
                raise refuse(state, status.HTTP_421_MISDIRECTED_REQUEST, i, "city", message, "other_shard")
            served, fallback = state.models.get(target, inst.city)
            if served is None:
                message = f"no {target} model for {inst.city!r} and no global fallback"
                raise refuse(state, status.HTTP_503_SERVICE_UNAVAILABLE, i, "city", message, "no_model")
            hit = per_city[inst.city] = (served, fallback, known_zones(catalog, inst.city, served.zones))
        served_by.append(hit[0])
        fallbacks.append(hit[1])
        zones.append(hit[2])
    try:
        pickup, dropoff = place(instances, catalog, zones)
    except RequestError as exc:
        raise refuse(state, 422, exc.index, exc.field, str(exc), exc.reason) from exc
    return Job(request_id, now, target, instances, served_by, fallbacks, pickup, dropoff)


@dataclass
class _Part:
    """The rows of one job that one model answers: ``index`` into the job, ``at`` into the model's batch."""

    job: int
    index: np.ndarray
    at: slice


def _rows(jobs: list[Job], parts: list[_Part]) -> TripRows:
    """The trip rows of the parts, one after the other: built once for the run, not per request."""
    if len(parts) == 1 and len(parts[0].index) == len(jobs[parts[0].job]):
        job = jobs[parts[0].job]
        return trip_rows(job.instances, job.pickup_zones, job.dropoff_zones, [job.now] * len(job))
    picked = [(jobs[p.job], i) for p in parts for i in p.index.tolist()]
    return trip_rows(
        [job.instances[i] for job, i in picked],
        [job.pickup_zones[i] for job, i in picked],
        [job.dropoff_zones[i] for job, i in picked],
        [job.now for job, _ in picked],
    )


def answer(state: AppState, jobs: list[Job]) -> list[Answer | HTTPException]:
    """Every job's answer, or its refusal (a per-km model and a trip of unknown length), in order."""
    catalog = state.models.catalog
    contexts: dict[str, CityContext] = {}
    for job in jobs:
        for inst in job.instances:
            if inst.city not in contexts:
                contexts[inst.city] = catalog.get(inst.city).context
    # The rows each model answers, job by job, and where they sit in that model's batch.
    by_model: dict[int, tuple[Served, list[_Part]]] = {}
    for j, job in enumerate(jobs):
        groups: dict[int, list[int]] = {}
        for i, served in enumerate(job.served_by):
            groups.setdefault(id(served), []).append(i)
        for key, members in groups.items():
            parts = by_model.setdefault(key, (job.served_by[members[0]], []))[1]
            start = parts[-1].at.stop if parts else 0
            parts.append(_Part(j, np.asarray(members), slice(start, start + len(members))))

    values = [np.empty(len(job)) for job in jobs]
    degraded = [np.zeros(len(job), dtype=bool) for job in jobs]
    no_distance: dict[int, int] = {}  # job -> its first instance a per-km model could not answer
    degraded_by: dict[int, Counter[str]] = {}  # job -> degraded rows by reason
    answered: list[_Answered] = []
    for served, parts in by_model.values():
        model = served.model
        if model.flat is None:
            state.hot.want(model)  # its trees, flattened in the background, answer its next requests
        rows = _rows(jobs, parts)
        columns, online = model_columns(state.online.reader(model.feature_service), rows, contexts)
        pred = model.predict_columns(columns, len(rows))
        answered.append(_Answered(served, parts, rows, columns, pred, online.missing))
        for p in parts:
            own = pred[p.at]
            unknown = np.flatnonzero(~np.isfinite(own))
            if unknown.size:  # a per-km model and a trip of unknown length
                first = int(p.index[unknown[0]])
                no_distance[p.job] = min(first, no_distance.get(p.job, first))
                continue
            missing = online.missing[p.at]
            values[p.job][p.index] = own
            degraded[p.job][p.index] = missing
            if missing.any():
                reason = "store_error" if online.error else "missing_or_stale"
                degraded_by.setdefault(p.job, Counter())[reason] += int(missing.sum())
    # Counted and logged only now, when every model of the run has answered: a run that raises is
    # run again job by job (serving.batching), and nothing of the failed pass may count twice.
    # A refused request logs nothing and counts no degraded rows, as it answers nothing.
    message = "give distance_km or the four coordinates"
    refused = {j: refuse(state, 422, i, "distance_km", message, "no_distance") for j, i in no_distance.items()}
    for j, reasons in degraded_by.items():
        if j not in refused:
            for reason, count in reasons.items():
                state.metrics.degraded.labels(jobs[j].target, reason).inc(count)
    logged = [batch for a in answered if (batch := a.log_batch(jobs, refused)) is not None]
    dropped = state.log.submit(logged)
    if dropped:
        state.metrics.log_dropped.inc(dropped)
    return [refused[j] if j in refused else Answer(values[j], degraded[j]) for j in range(len(jobs))]


@dataclass
class _Answered:
    """What one model answered in a run: its rows (of all the run's jobs), their inputs and predictions."""

    served: Served
    parts: list[_Part]
    rows: TripRows
    columns: dict[str, np.ndarray]
    predictions: np.ndarray
    missing: np.ndarray

    def log_batch(self, jobs: list[Job], refused: Container[int]) -> PredictionBatch | None:
        """The prediction log's batch of these rows, one for the whole run, without refused jobs' rows."""
        parts = [p for p in self.parts if p.job not in refused]
        if not parts:
            return None
        model = self.served.model
        names = [n for n in model.features if n != "city"]
        at: slice | np.ndarray = slice(None)
        rows, columns = self.rows, self.columns
        if len(parts) < len(self.parts):
            kept = np.concatenate([np.arange(p.at.start, p.at.stop) for p in parts])
            rows, columns, at = self.rows.take(kept), {n: self.columns[n][kept] for n in names}, kept
        sizes = [len(p.index) for p in parts]
        return PredictionBatch(
            ts_us=np.repeat(np.array([epoch_us(jobs[p.job].now) for p in parts], dtype="int64"), sizes),
            request_ids=[jobs[p.job].request_id for p in parts for _ in p.index],
            target=jobs[parts[0].job].target,
            model=model.name,
            version=model.version,
            cities=rows.city,
            fallbacks=[jobs[p.job].fallbacks[i] for p in parts for i in p.index],
            degraded=self.missing[at],
            features={n: columns[n] for n in names},
            predictions=self.predictions[at],
            trip_ids=[jobs[p.job].instances[i].trip_id for p in parts for i in p.index],
            pickup_s=rows.pickup_s,
            pickup_zones=rows.pickup_zone,
            dropoff_zones=rows.dropoff_zone,
        )
