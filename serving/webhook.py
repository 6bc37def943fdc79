"""Registering this server with MLflow's registry webhooks (MLflow 3.x, SQL-backed tracking server).

``CITYML_WEBHOOK_URL`` (where MLflow reaches ``POST /admin/registry-events``) and
``CITYML_WEBHOOK_SECRET`` (the HMAC key both sides share) set: at startup the server creates, or
updates, one webhook named after that URL for ``model_version_alias.created``. MLflow refuses
``http://`` and private addresses unless its server runs with ``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https``
and ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true`` (a cluster-internal URL usually needs both).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from typing import Any

from cityml.registry import client
from cityml.settings import Settings

log = logging.getLogger(__name__)

#: A signed delivery's timestamp may be this far from the server's clock, either way; older or newer is refused
#: (``serving.api.routes.admin``), so a delivery captured now cannot be replayed later.
MAX_SKEW_S = 300


class Deliveries:
    """The registry webhook deliveries this worker took, by delivery id: each is handled once.

    A replay inside the timestamp window (or MLflow trying again) is told it was received. An id is
    taken before its reload starts, so copies arriving together do not all reload; it is given back if
    handling it failed (MLflow may try again). Ids are kept while their timestamp could still pass,
    ``2 * MAX_SKEW_S`` (the sender's clock may run ahead), and at most ``limit`` of them.
    """

    def __init__(self, window_s: float = 2 * MAX_SKEW_S, limit: int = 10_000) -> None:
        self.window_s = window_s
        self.limit = limit
        self._taken: OrderedDict[str, float] = OrderedDict()

    def take(self, delivery_id: str) -> bool:
        """Whether ``delivery_id`` is new; if it is, it is taken (a second ``take`` is False)."""
        now = time.monotonic()
        taken = self._taken
        while taken and (len(taken) >= self.limit or next(iter(taken.values())) < now - self.window_s):
            taken.popitem(last=False)
        if delivery_id in taken:
            return False
        taken[delivery_id] = now
        return True

    def give_back(self, delivery_id: str) -> None:
        """Forget a delivery whose handling failed."""
        self._taken.pop(delivery_id, None)


EVENTS: list[Any] = ["model_version_alias.created"]
#: Set by ``cityml serve --workers N``, which registers the webhook once before starting workers
#: (each worker creating it would race to make several).
ENSURED_ENV = "CITYML_WEBHOOK_ENSURED"


def ensure_webhook(settings: Settings) -> str | None:
    """Create or update this server's webhook; returns its id, or None when not configured or not possible."""
    from mlflow.exceptions import MlflowException

    secret = settings.webhook_secret.get_secret_value().strip() if settings.webhook_secret else ""
    if not (settings.webhook_url and secret) or os.environ.get(ENSURED_ENV) == "1":
        return None
    if not settings.tracking_uri.startswith(("http://", "https://")):
        log.warning("webhook not registered: the registry (%s) is not an MLflow server", settings.tracking_uri)
        return None
    name = "cityml-serving-" + hashlib.sha256(settings.webhook_url.encode()).hexdigest()[:12]
    c = client(settings)
    try:
        existing = [w for w in c.list_webhooks(max_results=1000) if w.name == name]
        if existing:
            hook = c.update_webhook(
                existing[0].webhook_id, url=settings.webhook_url, events=EVENTS, secret=secret, status="ACTIVE"
            )
        else:
            hook = c.create_webhook(name, settings.webhook_url, EVENTS, description="cityml serving", secret=secret)
    except MlflowException as exc:
        log.warning("webhook not registered (%s); polling every %ss instead", exc.message, settings.reload_interval_s)
        return None
    log.info("MLflow webhook %s -> %s", hook.webhook_id, settings.webhook_url)
    return str(hook.webhook_id)
