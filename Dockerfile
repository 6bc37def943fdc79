# One image for every cityml process (MLflow, each Airflow component, the API, one-off jobs): the same
# packages, installed from uv.lock, everywhere. Build it through docker-compose.yml, or by hand:
#   docker build --build-arg GIT_SHA=$(git rev-parse --short=12 HEAD) -t cityml:local .
FROM python:3.11-slim

ARG UV_VERSION=0.13.8
# /opt/venv: outside /app, so the dependency layer stays cached while the code changes.
# Bytecode compiled at build time: the code is read-only to the user it runs as.
# GIT_PYTHON_REFRESH: there is no git in the image (the commit comes from GIT_SHA); MLflow need not look.
# NUMBA_CACHE_DIR: serving's compiled tree loop (cityml.trees) is cached where the user can write.
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GIT_PYTHON_REFRESH=quiet \
    NUMBA_CACHE_DIR=/tmp/numba

# libgomp1: LightGBM's OpenMP. /data and /mlartifacts are where the named volumes mount; a new volume
# takes its owner from the image's folder, so the non-root user can write there.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir "uv==${UV_VERSION}" \
    && groupadd --gid 10001 cityml \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin cityml \
    && mkdir -p /data /mlartifacts \
    && chown cityml:cityml /data /mlartifacts

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY . .
# The project itself, editable: its defaults (feature_repo/, dags/) are found beside the packages in /app.
RUN uv sync --frozen --no-dev \
    && python -m compileall -q cityml training serving monitoring dags feature_repo

# Last, so a new commit rebuilds only this layer. Required: a model version tagged 'unknown' cannot be
# traced back to its code (training/registry.py reads CITYML_GIT_SHA).
ARG GIT_SHA
RUN test -n "${GIT_SHA}" \
    || { echo "GIT_SHA build arg missing: --build-arg GIT_SHA=\$(git rev-parse --short=12 HEAD)" >&2; exit 1; }
ENV CITYML_GIT_SHA=${GIT_SHA} \
    CITYML_HOME=/data

USER 10001:10001
EXPOSE 8000
CMD ["cityml", "serve", "--host", "0.0.0.0", "--port", "8000"]
