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
from typing import Any

from cityml.registry import client
from cityml.settings import Settings

log = logging.getLogger(__name__)

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
