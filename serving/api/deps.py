"""FastAPI dependencies, as ``Annotated`` aliases the routes declare."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from serving.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.cityml
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def _matches(given: str | None, keys: list[str]) -> bool:
    return given is not None and any(secrets.compare_digest(given, k) for k in keys)


def require_api_key(state: StateDep, x_api_key: Annotated[str | None, Header()] = None) -> str:
    keys = [k.get_secret_value() for k in state.settings.api_keys]
    if not keys:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no API keys configured: set CITYML_API_KEYS")
    if not _matches(x_api_key, keys):
        state.metrics.errors.labels("auth").inc()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key header")
    return str(x_api_key)


def require_admin(state: StateDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    admin = state.settings.admin_key
    if admin is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no admin key configured: set CITYML_ADMIN_KEY")
    if not _matches(x_api_key, [admin.get_secret_value()]):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key header (admin)")


ApiKeyDep = Annotated[str, Depends(require_api_key)]
AdminDep = Annotated[None, Depends(require_admin)]
