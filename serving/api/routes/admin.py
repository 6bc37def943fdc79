"""Operator endpoints: ``/admin/reload`` (admin key) and MLflow's registry webhook (HMAC-signed).

When the registry is an MLflow tracking server with a SQL backend, the server registers a webhook
for ``model_version_alias.created`` (``serving.webhook``) and MLflow calls
``POST /admin/registry-events`` when an alias moves: the signature is checked and just that model
is reloaded. Polling (``CITYML_RELOAD_INTERVAL_S``) stays as the fallback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, status

from cityml.naming import CHAMPION, split_model_name
from serving.api.deps import AdminDep, StateDep
from serving.schemas import error_responses
from serving.state import AppState
from serving.webhook import MAX_SKEW_S

router = APIRouter(prefix="/admin", tags=["admin"])

BODY_TIMEOUT_S = 10.0  # MLflow sends a few hundred bytes at once
_SECONDS = re.compile(r"[0-9]{1,12}")  # epoch seconds, ASCII digits only (str.isdigit takes "¹²³")


@router.post("/reload", responses=error_responses(401, 403, 503))
async def reload(state: StateDep, _: AdminDep) -> dict[str, object]:
    """Load every champion whose alias moved since the last load."""
    changes = await state.reload(tell_others=True)
    return {"changed": changes, "models": len(state.models.all())}


def signature_ok(secret: str, delivery_id: str, timestamp: str, body: bytes, signature: str) -> bool:
    """MLflow's webhook signature: ``v1,`` + base64 HMAC-SHA256 of ``<delivery id>.<timestamp>.<body>``."""
    version, _, given = signature.partition(",")
    if version != "v1" or not given:
        return False
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest())
    return hmac.compare_digest(expected, given.encode("latin-1"))


def _refused(msg: str, code: int = status.HTTP_401_UNAUTHORIZED) -> HTTPException:
    return HTTPException(code, [{"loc": ["header", "X-MLflow-Signature"], "msg": msg, "type": "bad_signature"}])


@router.post("/registry-events", responses=error_responses(401, 404, 408, 422))
async def registry_event(
    request: Request,
    state: StateDep,
    x_mlflow_signature: Annotated[str | None, Header()] = None,
    x_mlflow_timestamp: Annotated[str | None, Header()] = None,
    x_mlflow_delivery_id: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """An MLflow registry webhook delivery: a moved ``@champion`` reloads that model at once."""
    secret = state.settings.webhook_secret.get_secret_value().strip() if state.settings.webhook_secret else ""
    if not secret:
        # Not enabled on this server: nothing is listening here.
        raise _refused("registry webhook not enabled: set CITYML_WEBHOOK_SECRET", status.HTTP_404_NOT_FOUND)
    if not (x_mlflow_signature and x_mlflow_timestamp and x_mlflow_delivery_id):
        raise _refused("missing X-MLflow-Signature, X-MLflow-Timestamp or X-MLflow-Delivery-Id")
    try:  # anyone may call this route: a body trickled in byte by byte must not hold the connection
        body = await asyncio.wait_for(request.body(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise HTTPException(
            status.HTTP_408_REQUEST_TIMEOUT,
            [{"loc": ["body"], "msg": f"body not received within {BODY_TIMEOUT_S:g} s", "type": "timeout"}],
        ) from None
    if not signature_ok(secret, x_mlflow_delivery_id, x_mlflow_timestamp, body, x_mlflow_signature):
        raise _refused("signature does not match")
    if not _SECONDS.fullmatch(x_mlflow_timestamp) or abs(time.time() - int(x_mlflow_timestamp)) > MAX_SKEW_S:
        raise _refused(f"timestamp more than {MAX_SKEW_S} s away")
    if not state.deliveries.take(x_mlflow_delivery_id):  # a replay, or MLflow trying again
        return {"ignored": f"delivery {x_mlflow_delivery_id[:64]!r} already received"}
    try:
        return await _handle(state, body)
    except BaseException:
        state.deliveries.give_back(x_mlflow_delivery_id)  # not handled: MLflow may try it again
        raise


async def _handle(state: AppState, body: bytes) -> dict[str, Any]:
    """A verified delivery's event: a moved ``@champion`` reloads that model; anything else is ignored."""
    try:
        event = json.loads(body)
        entity, action, data = event["entity"], event["action"], event["data"]
        name, alias = str(data["name"]), str(data.get("alias", ""))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise HTTPException(
            422, [{"loc": ["body"], "msg": f"not an MLflow event: {str(exc)[:200]}", "type": "bad_event"}]
        ) from exc
    if entity != "model_version_alias" or alias != CHAMPION:
        return {"ignored": f"{entity}.{action} {name}@{alias}"}
    _, city = split_model_name(name)
    if not state.models.owns(city):  # a sharded fleet: that model's shard has its own webhook
        return {"ignored": f"{name} is held by shard {state.models.shard_of(city)}"}
    changes = await state.reload({name}, tell_others=True)  # MLflow called one worker; the others follow
    return {"changed": changes}
