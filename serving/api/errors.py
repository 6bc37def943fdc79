"""One error shape everywhere, keys checked and bodies bounded before they are read, no 500 leaks.

Every error answers ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`` (FastAPI's
validation shape), without the input echoed back. The guard runs before routing: a protected path
without a valid key is refused before its body is read, a body past ``max_body_bytes`` gets a 413,
a direct route (``serving.api.direct``: the predict) is called from here, past the router, and an
exception anywhere becomes a counted, logged 500 that keeps the connection usable.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette._utils import get_route_path  # the router's own rule: the guard must see the path it routes
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.deps import check_key, raise_for
from serving.api.direct import call, match
from serving.schemas import MAX_INSTANCES

log = logging.getLogger(__name__)

MAX_ERRORS = 20  # a 422 lists at most this many problems


def error_body(msg: str, kind: str, loc: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"detail": [{"loc": loc or [], "msg": msg, "type": kind}], **extra}


def _json(code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=code, headers=headers)


class TooLarge(HTTPException):
    """The body grew past the limit while being read (an HTTPException: FastAPI passes it through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, error_body(f"body larger than {limit} bytes", "too_large", ["body"])["detail"])


#: Paths anyone may call: health, metrics, the API's documents. MLflow's webhook cannot send a key:
#: its route checks the delivery's HMAC signature instead. Every other path needs a key, an admin
#: key under ``/admin``: a route added later is closed until it is listed here.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    | {"/admin/registry-events"}
)
PUBLIC_PREFIXES = ("/static-offline-docs/",)
ADMIN_PREFIX = "/admin"
MAX_LENGTH_DIGITS = 18  # a Content-Length any body limit can be compared with


class Guard:
    """Pure ASGI middleware: key check, body limit and the last-resort 500, before and around routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = getattr(scope["app"].state, "cityml", None) if "app" in scope else None
        # The path the router matches: under a prefix (``--root-path``, a proxy's mount) the prefix is
        # part of ``scope["path"]``; checking that instead let every request past the key check.
        path = get_route_path(scope)
        public = path.rstrip("/") or "/"  # /healthz/ is /healthz to the router (a redirect), and to the guard
        if public not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            refusal = (
                self._refuse(state, scope, path)
                if state is not None
                else _json(503, error_body("starting: models not loaded yet", "unavailable"))
            )
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        limit = state.settings.max_body_bytes if state is not None else 1 << 20
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or len(length) > MAX_LENGTH_DIGITS):
            body = error_body("Content-Length must be a number of bytes", "bad_request", ["header", "Content-Length"])
            await _json(status.HTTP_400_BAD_REQUEST, body)(scope, receive, send)
            return
        if length is not None and int(length) > limit:
            body = error_body(f"body larger than {limit} bytes", "too_large", ["body"])
            await _json(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, body)(scope, receive, send)
            return

        seen = 0
        started = False

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        # A direct route (the predict) is called from here; every other path goes through the router.
        try:
            direct = match(scope["app"], scope["method"], path) if "app" in scope else None
            if direct is not None:
                await call(*direct, scope, bounded, tracked)
            else:
                await self.app(scope, bounded, tracked)
        except TooLarge as exc:
            if not started:
                await _json(exc.status_code, {"detail": exc.detail})(scope, receive, send)
        except Exception:
            request_id = uuid.uuid4().hex
            log.exception("500 on %s %s (request %s)", scope.get("method"), scope["path"], request_id)
            if state is not None:
                state.metrics.server_errors.labels(_route(scope)).inc()
            if not started:
                body = error_body("internal error; the server logged it", "server_error", request_id=request_id)
                await _json(500, body)(scope, receive, send)

    def _refuse(self, state: Any, scope: Scope, path: str) -> JSONResponse | None:
        admin = path.startswith(ADMIN_PREFIX)
        access = check_key(state.settings, _header(scope, b"x-api-key"), admin)
        if access == "ok":
            return None
        if path.startswith("/v1/predict"):
            state.metrics.errors.labels("auth").inc()
        try:
            raise_for(access, admin)
        except StarletteHTTPException as exc:
            return _json(exc.status_code, {"detail": exc.detail}, dict(exc.headers or {}))
        return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "too_long" and tuple(e.get("loc", ()))[-1:] == ("instances",) for e in errors):
        body = error_body(f"at most {MAX_INSTANCES} instances per request", "too_many_instances", ["body", "instances"])
        return _json(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, body)
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:300], "type": e.get("type")} for e in errors
    ]
    return _json(422, {"detail": detail[:MAX_ERRORS], "errors": len(detail)})


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if not isinstance(detail, list):
        detail = error_body(str(detail), _KINDS.get(exc.status_code, "error"))["detail"]
    return _json(exc.status_code, {"detail": detail}, dict(exc.headers or {}))


_KINDS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 503: "unavailable"}


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_middleware(Guard)


__all__ = ["error_body", "install"]
