"""Routes whose endpoint is the request handler itself, called by the guard past the router.

A predict spent about a tenth of its time in layers it does not use: Starlette's middleware
stack, the router trying routes in turn, FastAPI's per-request parameter solving. A
:class:`DirectRoute` endpoint takes the bare request and reads and checks its body itself;
:func:`match` finds one for a request with a compiled pattern, and :func:`call` runs it, its
exceptions answered by the app's own exception handlers, as the router would have. The route
stays an ``APIRoute`` of the app: its OpenAPI entry, and the router still reaches it for a
caller that skips the guard (no such caller in the app).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette._utils import is_async_callable  # how Starlette itself tells a handler's kind
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send


class DirectRoute(APIRoute):
    """An ``APIRoute`` whose endpoint is ``async (Request) -> Response`` and declares no parameters."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        d = self.dependant
        declared = [*d.dependencies, *d.path_params, *d.query_params, *d.header_params, *d.cookie_params]
        if declared or d.body_params:  # FastAPI would solve them; this route would silently not
            raise TypeError(f"{path}: a DirectRoute endpoint takes the request only, not dependencies or parameters")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint  # type: ignore[no-any-return]


def match(app: FastAPI, method: str, path: str) -> tuple[DirectRoute, dict[str, Any]] | None:
    """The direct route that answers ``method path`` and its path parameters, or None (the router's to route).

    Only a full match with the method allowed: a trailing slash, another method or a path that
    fails a convertor goes to the router, which redirects or refuses as for any route.
    """
    routes: list[DirectRoute] | None = getattr(app.state, "direct_routes", None)
    if routes is None:
        routes = [r for r in app.router.routes if isinstance(r, DirectRoute)]
        app.state.direct_routes = routes
    for route in routes:
        found = route.path_regex.match(path)
        if found is None or method not in route.methods:
            continue
        try:
            params = {k: route.param_convertors[k].convert(v) for k, v in found.groupdict().items()}
        except ValueError:
            return None
        return route, params
    return None


async def call(route: DirectRoute, params: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
    """Answer the request with the route's endpoint; an exception with the app's handler for it, if it has one."""
    scope["path_params"] = params
    scope["route"] = route
    scope["endpoint"] = route.endpoint
    request = Request(scope, receive)
    try:
        response = await route.endpoint(request)
    except Exception as exc:
        handler = _handler(scope["app"], exc)
        if handler is None:
            raise
        if is_async_callable(handler):
            response = await handler(request, exc)
        else:  # as Starlette runs a plain function handler
            response = await run_in_threadpool(handler, request, exc)
    await response(scope, receive, send)


def _handler(app: FastAPI, exc: Exception) -> Callable[[Request, Exception], Any] | None:
    """The app's handler for ``exc``, looked up as Starlette does: an ``HTTPException``'s status code first,
    then its class or the nearest base."""
    handlers = app.exception_handlers
    if isinstance(exc, HTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]  # type: ignore[no-any-return]
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]  # type: ignore[no-any-return]
    return None
