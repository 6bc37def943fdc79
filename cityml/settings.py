"""One typed settings object for every cityml process.

Values come from environment variables prefixed ``CITYML_`` (or a ``.env`` file). Nothing here
runs at import time: call :func:`get_settings` where the settings are needed, and build a
:class:`Settings` of your own in tests.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The longest training window a run may ask for (the retrain form, `cityml train --train-days`): ten years.
MAX_TRAIN_DAYS = 3650


class Settings(BaseSettings):
    """Where cityml keeps its state and how it reaches MLflow, Feast, Airflow and the API."""

    model_config = SettingsConfigDict(env_prefix="CITYML_", env_file=".env", extra="ignore")

    home: Path = Field(default=PROJECT_ROOT / "var", description="State folder (data, registry, logs).")
    catalog_path: Path = Field(
        default=Path(__file__).resolve().parent / "cities.yaml", description="City catalog YAML."
    )
    mlflow_tracking_uri: str = Field(default="", description="Empty: a SQLite file under home.")
    metadata_url: str = Field(
        default="", description="SQLAlchemy URL of cityml's tables (drift history); empty: a SQLite file under home."
    )
    mlflow_artifact_root: str = Field(default="", description="Empty: a folder under home.")
    mlflow_experiment: str = "cityml"
    feast_repo_path: Path = PROJECT_ROOT / "feature_repo"
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "127.0.0.1:6379"
    airflow_home: Path | None = Field(default=None, description="Empty: home/airflow.")
    dags_folder: Path = PROJECT_ROOT / "dags"
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, description="Comma-separated.")
    admin_key: SecretStr | None = None
    reload_interval_s: float = 30.0
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of MLflow's registry webhook (POST /admin/registry-events)."
    )
    webhook_url: str = Field(
        default="", description="Where MLflow should call this server (registers the webhook at startup); empty: none."
    )
    online_retry_s: float = Field(
        default=5.0, gt=0, description="After an online-store failure, serve without it (degraded) this long."
    )
    online_cache_s: float = Field(
        default=30.0,
        ge=0,
        description="Serving reuses an online-store row this long after reading it (0: read every time); "
        "a row materialized meanwhile is seen this much late (materialization is hourly).",
    )
    flat_models: int = Field(
        default=1000,
        ge=0,
        description="Models whose trees serving flattens for its compiled loop (cityml.trees), the first that "
        "answer: about 1.6 MB each for a six-booster model. 0: LightGBM walks every model's trees.",
    )
    serve_shards: int = Field(
        default=1, ge=1, description="Serving replicas the cities are spread over (cityml/shards.py); 1: no sharding."
    )
    serve_shard: int = Field(
        default=0,
        ge=0,
        description="This server's shard (0 .. serve_shards-1): it loads and answers its cities only, plus the "
        "global fallbacks; another city's request gets 421 naming its shard.",
    )
    load_workers: int = Field(
        default=0,
        ge=0,
        description="Threads loading champions (startup, reloads); 0: one per CPU it may use, at most 8. "
        "Parsing a booster is CPU work: 2,000 six-booster models on 2 CPUs loaded in 69 s with 1 thread, 45 s with 2, "
        "48 s with 4.",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body served (413 past it).")
    prediction_log_queue: int = Field(
        default=100_000,
        ge=1,
        description="Predictions waiting to be written; past it they are dropped and counted. A run of the "
        "model stage hands its rows of a model as one batch (up to 1,000), dropped whole if it does not fit.",
    )
    drift_min_rows: int = 50
    drift_method: Literal["auto", "psi", "ks", "wasserstein", "js", "chi2"] = Field(
        default="wasserstein",
        description="The statistic the drift job's verdicts are made with (monitoring/stats.py); auto: KS or "
        "chi-square up to 1,000 live values, Wasserstein or Jensen-Shannon past that, as Evidently's preset.",
    )
    drift_cooldown_h: float = Field(
        default=24.0, ge=0, description="A drifting city retrained less than this many hours ago is not asked again."
    )
    drift_threshold: float | None = Field(
        default=0.3,
        gt=0,
        description="Drift at or above this value of drift_method (a p-value: below it); empty: the method's "
        "default (PSI 0.25, Wasserstein 0.1 sd, JS 0.1, KS and chi-square p 0.05).",
    )
    accuracy_factor: float = Field(
        # An unchanged synthetic city's weekdays read up to 1.48x its weekday test MAE over a week; a city whose
        # centre slowed to 70% read 2.7-3.7x (tests/e2e/test_drift_scenario.py).
        default=2.0,
        gt=1,
        description="Realized accuracy: a day whose MAE on completed trips exceeds the model's test MAE by this "
        "factor is a bad day (monitoring/accuracy.py).",
    )
    accuracy_days: int = Field(default=2, ge=1, description="Bad days in a row that flag a city for retraining.")
    accuracy_min_trips: int = Field(
        default=30, ge=1, description="Completed trips joined to predictions below which a day is not judged."
    )
    labels_tolerance_s: float = Field(
        default=120.0,
        gt=0,
        description="A prediction without the client's trip_id matches a completed trip of the same city and zones "
        "picked up this close to the predicted pickup time (the nearest one).",
    )
    # Measured on 2 cores (bench/RESULTS.md): 2 processes of 1 LightGBM thread beat 1 process of 2.
    train_workers: int = Field(default=2, ge=1, description="Cities fitted at once by `cityml train`.")
    train_threads: int = Field(default=2, ge=1, description="LightGBM threads per fit.")
    # All three, blended: on the NYC sample's time split and three earlier windows the mean of the
    # three boosters beat each of them for ETA, per_sqrt_km alone was best for price; the validation
    # window picks (bench/RESULTS.md, quality).
    train_label_scales: Annotated[list[Literal["none", "per_sqrt_km", "per_km"]], NoDecode] = Field(
        default=["per_km", "per_sqrt_km", "none"],
        description="Label scales a city model tries (cityml.modeling); with several, the validation window picks.",
    )
    train_blend: bool = Field(
        default=True,
        description="With several label scales, also try the mean of their models (a blend); the validation "
        "window picks. A blend serves every member, so it costs that many boosters' predictions.",
    )
    train_narrow_members: bool = Field(
        default=True,
        description="A blend candidate also holds a booster per label scale reading only the request's own "
        "features (not Feast's); the validation window picks. Doubles a city model's fits.",
    )
    train_refit: bool = Field(
        default=True, description="Refit the chosen model on training + validation windows before registering."
    )
    train_pool: bool = Field(
        default=True,
        description="Also try each city model as a correction to the global champion; the validation window picks.",
    )
    train_chunk_cities: int = Field(
        default=50,
        ge=1,
        description="Cities whose training sets a retrain holds at once: `cityml train` joins and fits its cities "
        "this many at a time, the global unit joins the catalog this many at a time; memory follows this number, "
        "not the catalog's size.",
    )
    # bench-fleet: a mapped task pays ~13 s to start and ~6 s for its first parity check, so 512 one-city tasks
    # of small cities spent more on starting than on fitting; 64 tasks keep 2 pool slots busy at ~1% of that.
    train_max_tasks: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Mapped city tasks a retrain run (retrain_city_models, retrain_demand) plans at most "
        "(Airflow refuses more than its `max_map_length`, 1,024): one city per task up to this many cities, "
        "chunks of near-equal size beyond. "
        "About 8 times the `cityml_training` pool's slots keeps them busy while each task's start-up is paid "
        "once per chunk.",
    )
    global_max_train_rows: int = Field(
        # bench-fleet at 100 cities: 630k training rows held the global task at 2.0 GB and fitted in 235 s.
        default=1_000_000,
        ge=1_000,
        description="Training rows of a fleet (global) model at most: past it each city gives an equal share, "
        "sampled from its training and validation windows (its test window stays whole).",
    )
    global_max_test_rows: int = Field(
        # bench-fleet at 1,000 cities: whole test windows (1.35M rows) beside the training rows held each global
        # task at ~5 GB.
        default=500_000,
        ge=1_000,
        description="Test rows a fleet (global) model is judged on at most: past it each city's test window "
        "gives an equal share, sampled evenly over it (its MAE an estimate on that sample).",
    )
    tune_budget_s: float = Field(
        default=0.0, ge=0, description="Seconds of Optuna search per city model (training/tune.py); 0: no search."
    )
    tune_max_trials: int = Field(
        default=100, ge=1, description="Optuna trials per city model at most, whatever the seconds left."
    )
    # The promotion gate (training/gate.py).
    gate_margin: float = Field(default=0.0, ge=0, lt=1, description="Relative MAE gain needed over the champion.")
    gate_min_train_rows: int = Field(default=500, ge=0)
    gate_min_skill: float = Field(default=0.05, ge=0, lt=1, description="Relative MAE gain needed over the median.")
    gate_parity_sample: int = Field(default=20, ge=0, description="Trips the gate's parity check samples; 0 disables.")
    gate_parity_hours: int = Field(
        default=4, ge=1, description="Pickup hours those trips come from (each hour is one materialization)."
    )
    gate_max_label_shift: float = Field(
        default=0.5,
        gt=0,
        description="Largest move of the median label per km from the champion's training data (0.5: x1.5 or /1.5) "
        "before promotion is blocked as a possible data fault.",
    )
    gate_clean_tolerance: float = Field(
        default=0.10,
        ge=0,
        description="How much worse than the champion a challenger may be on the champion's own test window.",
    )

    @field_validator("api_keys", "train_label_scales", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _shard_in_range(self) -> Settings:
        if self.serve_shard >= self.serve_shards:
            raise ValueError(
                f"serve_shard: {self.serve_shard} is not a shard of serve_shards={self.serve_shards} "
                f"(0 .. {self.serve_shards - 1})"
            )
        return self

    @field_validator("home", "feast_repo_path", "dags_folder", "catalog_path", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # Derived locations -------------------------------------------------------------------
    @property
    def trips_dir(self) -> Path:
        return self.home / "data" / "trips"

    @property
    def features_dir(self) -> Path:
        return self.home / "data" / "features"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "data" / "quarantine"

    @property
    def predictions_dir(self) -> Path:
        return self.home / "predictions"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def feast_state_dir(self) -> Path:
        return self.home / "feast"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def metadata_db(self) -> str:
        return self.metadata_url or f"sqlite:///{self.home / 'cityml.db'}"

    @property
    def artifact_root(self) -> str | None:
        """Where new experiments keep artifacts; None lets an MLflow server choose (its proxy)."""
        if self.mlflow_artifact_root:
            return self.mlflow_artifact_root
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return (self.home / "mlartifacts").as_uri()

    @property
    def airflow_home_path(self) -> Path:
        return (self.airflow_home or self.home / "airflow").expanduser().resolve()

    @property
    def feast_yaml(self) -> Path:
        name = "feature_store.yaml" if self.online_store == "sqlite" else "feature_store.redis.yaml"
        return self.feast_repo_path / name

    def feast_env(self) -> dict[str, str]:
        """Environment variables that ``feature_store.yaml`` and the Feast definitions read."""
        return {
            "CITYML_FEAST_STATE_DIR": str(self.feast_state_dir),
            "CITYML_FEATURES_DIR": str(self.features_dir),
            "CITYML_REDIS_URL": self.redis_url,
        }

    def airflow_env(self) -> dict[str, str]:
        """Environment for an embedded Airflow (SQLite metadata under home)."""
        home = self.airflow_home_path
        return {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        }

    def public(self) -> dict[str, Any]:
        """The effective settings as JSON-safe values, secrets masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********"
            elif isinstance(value, list):
                value = ["********" if isinstance(v, SecretStr) else v for v in value]
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        out["mlflow_tracking_uri"] = self.tracking_uri
        out["mlflow_artifact_root"] = self.artifact_root
        out["airflow_home"] = str(self.airflow_home_path)
        out["feast_yaml"] = str(self.feast_yaml)
        return out


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
