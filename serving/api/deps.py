"""FastAPI dependencies, as ``Annotated`` aliases the routes declare; the API key rules."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from cityml.settings import Settings
from serving.state import AppState

KEY_HEADER = "X-API-Key"
KEY_LOC = ["header", KEY_HEADER]
_key_header = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="A key from CITYML_API_KEYS.")

Access = Literal["ok", "missing", "wrong", "not_admin", "unset"]


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.cityml
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def _keys(values: list[str]) -> list[bytes]:
    """Configured keys as bytes; empty or blank ones count as unset."""
    return [v.strip().encode() for v in values if v.strip()]


def check_key(settings: Settings, given: bytes | None, admin: bool) -> Access:
    """Whether a raw header value opens a predict route (``admin=False``) or ``/admin/*``.

    Compared as bytes in constant time (a header is whatever bytes a client sends, not text).
    """
    predict_keys = _keys([k.get_secret_value() for k in settings.api_keys])
    admin_keys = _keys([settings.admin_key.get_secret_value()] if settings.admin_key else [])
    wanted = admin_keys if admin else predict_keys
    if not wanted:
        return "unset"
    given = given.strip() if given else None  # as h11 hands it over; httptools keeps the spaces
    if not given:
        return "missing"
    if any(hmac.compare_digest(given, k) for k in wanted):
        return "ok"
    if admin and any(hmac.compare_digest(given, k) for k in predict_keys):
        return "not_admin"
    return "wrong"


def raise_for(access: Access, admin: bool) -> None:
    """The refusal for an ``access`` other than "ok", in the API's error shape."""
    if access == "ok":
        return
    what = "CITYML_ADMIN_KEY" if admin else "CITYML_API_KEYS"
    code, msg, kind = {
        "unset": (status.HTTP_503_SERVICE_UNAVAILABLE, f"no key configured: set {what}", "no_key_configured"),
        "not_admin": (status.HTTP_403_FORBIDDEN, "this key may predict, not use /admin", "forbidden"),
    }.get(access, (status.HTTP_401_UNAUTHORIZED, f"{access} {KEY_HEADER} header", "unauthorized"))
    headers = {"WWW-Authenticate": "ApiKey"} if code == status.HTTP_401_UNAUTHORIZED else None
    raise HTTPException(code, [{"loc": KEY_LOC, "msg": msg, "type": kind}], headers=headers)


async def api_key_header(_: Annotated[str | None, Security(_key_header)]) -> None:
    """Declares the ``X-API-Key`` header in OpenAPI. The key itself is checked once, by
    ``serving.api.errors.Guard``, before the body is read: routes do not check it again."""


# The dependencies are ``async``: they do no I/O, and FastAPI would send each sync one through the
# thread pool, a thread hop per dependency per request.
ApiKeyDep = Annotated[None, Depends(api_key_header)]
AdminDep = Annotated[None, Depends(api_key_header)]
