#!/bin/sh
# The Airflow API server of docker-compose.yml. SimpleAuthManager reads its users' passwords from a JSON
# file (AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE); it is written here from AIRFLOW_ADMIN_PASSWORD (the
# admin) and AIRFLOW_RUNNER_PASSWORD (cityml-runner, what tasks write run notes as) at every start, so a changed secret takes effect on restart, into the container's own home (not the
# volume the DAG tasks share), readable by this user only. Airflow itself never sees the variable.
set -eu
python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
users = [u.split(":")[0] for u in os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",") if u.strip()]
passwords = {"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"], "cityml-runner": os.environ["AIRFLOW_RUNNER_PASSWORD"]}
missing = [user for user in users if user not in passwords]
if missing:
    raise SystemExit(f"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS: no password for {missing}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump({user: passwords[user] for user in users}, f)
PY
exec env -u AIRFLOW_ADMIN_PASSWORD -u AIRFLOW_RUNNER_PASSWORD airflow api-server "$@"
