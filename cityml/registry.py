"""Reading the MLflow registry: the client for the configured tracking URI, champions, profiles.

Writes (logging, registering, promoting) live in ``training.registry``; serving and monitoring
only read, through these functions.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cityml.modeling import (
    BASE_TAG,
    BLEND_TAG,
    CATEGORICAL_FEATURES,
    CITY_FEATURE,
    MEMBER_FILE,
    SCALE_FILE,
    SCALE_TAG,
    FeatureEncoder,
    LabelScale,
    Member,
    RawPredictor,
    predict_members,
)
from cityml.naming import CHAMPION, model_name
from cityml.profile import PROFILE_FILE
from cityml.settings import Settings

if TYPE_CHECKING:
    import lightgbm as lgb
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from cityml.trees import FlatTrees

log = logging.getLogger(__name__)


def client(settings: Settings) -> MlflowClient:
    """An MLflow client on the settings' tracking and registry URI (also made the process default)."""
    import mlflow
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if settings.tracking_uri.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def fail_fast() -> None:
    """A registry that is down fails a call in seconds, not after MLflow's minutes of HTTP retries.

    For a server that must keep answering (``cityml serve``); a user's own environment wins.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


Held = TypeVar("Held")


class RegistryError(RuntimeError):
    """The registry could not answer (down, timing out, failing): not the same as "no champion".

    Its message is :func:`redact`-ed: it is shown on ``/readyz``, which needs no key.
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#]*)\?[^\s'\")]*")


def redact(text: str) -> str:
    """``text`` with what URLs carry as secrets masked: a user and password (``https://user:pw@host``) and
    query strings (a pre-signed artifact URL's signature). Registry errors quote the URLs they failed on."""
    return _QUERY.sub(r"\1?***", _USERINFO.sub(r"\1***@", text))


def champion(c: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding ``@champion``; None when the model or the alias does not exist.

    Raises :class:`RegistryError` when the registry fails to answer: a caller that holds a model
    must keep it then, not read the failure as "no champion".
    """
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if absent(exc):
            return None
        raise RegistryError(f"registry failed on {name}@{CHAMPION}: {exc.message[:300]}") from exc
    except OSError as exc:
        raise RegistryError(f"registry unreachable on {name}@{CHAMPION}: {exc}") from exc


def absent(exc: Exception) -> bool:
    """Whether an MLflow error says the thing asked for does not exist (as opposed to a registry that failed)."""
    code = getattr(exc, "error_code", None)
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


#: MLflow error codes of a registry that failed to answer (down, overloaded, timing out), not of a bad request.
OUTAGE_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED", "ABORTED"}
)


def _ask(what: str, call: Callable[[], Held]) -> Held | None:
    """One registry read of a load: its answer; None when the registry says there is no such thing;
    :class:`RegistryError` when it failed to answer (the network, or an :data:`OUTAGE_CODES` error).

    A load that meets a failing registry must not blame the version (a stale version is not tried
    again until its alias moves); any other error (permission denied, a malformed tag) is the
    version's and propagates. Every read of a load goes through here: the version, where its model
    is, and each file downloaded from a remote artifact store (MLmodel, the booster, the files it
    serves with; older versions' run and run files excepted).
    """
    try:
        return call()
    except Exception as exc:
        if absent(exc):
            return None
        if isinstance(exc, OSError) or getattr(exc, "error_code", None) in OUTAGE_CODES:
            raise RegistryError(f"registry failed reading {what}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        raise


def champions(c: MlflowClient) -> dict[str, ModelVersion | str]:
    """Every registered model's ``@champion`` version, by model name, in a few paginated searches.

    One call per 1,000 models instead of one per model (2,000 champions: ~4 s of lookups at
    startup). Where the champion is the model's latest version (a retrain registered it and the gate
    promoted it) the search already holds that version, tags and all, and it is given whole;
    otherwise its number, for the loader to read. Raises :class:`RegistryError` when the registry
    fails to answer.
    """
    from mlflow.exceptions import MlflowException

    out: dict[str, ModelVersion | str] = {}
    token = None
    try:
        while True:
            page = c.search_registered_models(max_results=1000, page_token=token)
            for model in page:
                version = (model.aliases or {}).get(CHAMPION)
                if version is None:
                    continue
                whole = [v for v in model.latest_versions or [] if str(v.version) == str(version) and v.tags]
                out[model.name] = whole[0] if whole else str(version)
            token = page.token
            if not token:
                return out
    except MlflowException as exc:
        raise RegistryError(f"registry failed listing champions: {exc.message[:300]}") from exc
    except OSError as exc:
        raise RegistryError(f"registry unreachable listing champions: {exc}") from exc


def choose_serving(
    target: str, city: str, own: Held | None, fleet: Held | None, fleet_learned: Callable[[Any], bool]
) -> tuple[Held | None, str | None]:
    """Which model answers for ``city``, and why when it is not the city's own: the one rule serving, the drift
    job and realized accuracy share, whatever they hold (loaded models, registry versions).

    The city's own ``@champion``; else the fleet model, when it learned the city (it cannot put a prediction
    back in the units of a city it has no rate for); else none.
    """
    if own is not None:
        return own, None
    if fleet is not None and fleet_learned(fleet):
        return fleet, f"{model_name(target, city)} has no champion"
    return None, None


def fleet_version_learned(
    c: MlflowClient, city: str, scale_of: Callable[[ModelVersion], LabelScale] | None = None
) -> Callable[[ModelVersion], bool]:
    """Whether a fleet model's registered version learned ``city``: the rule :meth:`LoadedModel.serves` applies,
    read from the version's label scale (the rates of ``label_scale.json``) without loading the booster.
    ``scale_of``: how to read that scale (a run over many cities reads it once); default :func:`version_scale`."""
    read = scale_of or (lambda mv: version_scale(c, mv))
    return lambda mv: read(mv).covers(city)


def version_scale(c: MlflowClient, mv: ModelVersion, files: VersionFiles | None = None) -> LabelScale:
    """A registered version's label scale: its tag, and for ``per_km_city`` its rates file."""
    tags = dict(mv.tags or {})
    if tags.get(SCALE_TAG) != "per_km_city":
        return LabelScale.from_tags(tags)
    own = files or VersionFiles(c, mv)
    try:
        found = own.file(SCALE_FILE)
        return LabelScale.from_tags(tags, str(found) if found is not None else None)
    finally:
        if files is None:
            own.close()


@dataclass
class LoadedModel:
    name: str
    version: str
    booster: lgb.Booster
    tags: dict[str, str]
    run_id: str | None
    scale: LabelScale = field(default_factory=LabelScale)
    base: LoadedModel | None = None  # a pooled city model's base (the fleet model version it learned on)
    files: VersionFiles | None = field(default=None, repr=False)  # where its artifacts are
    others: list[tuple[lgb.Booster, LabelScale]] = field(default_factory=list)  # a blend's other members
    selftest: dict[str, Any] | None = field(default=None, repr=False)  # its SELFTEST_FILE, read at load
    #: Its members' trees in ``cityml.trees``' compiled loop, once built and checked (:meth:`flatten`);
    #: None: LightGBM walks them. Serving builds it for the models that answer, off the request path.
    flat: FlatTrees | None = field(default=None, repr=False)

    @property
    def feature_service(self) -> str:
        """The Feast FeatureService the model was trained on (its tag), read with the same TTLs online."""
        return self.tags.get("feature_service", "")

    @cached_property
    def encoder(self) -> FeatureEncoder:
        """How rows become the booster's input matrix (built on first use; ``load_version`` builds it)."""
        return FeatureEncoder(self.booster)

    @cached_property
    def raw(self) -> RawPredictor:
        """The booster's raw predictions, its single-row path prepared once (``load_version`` builds it)."""
        return RawPredictor(self.booster)

    @cached_property
    def members(self) -> list[Member]:
        """Every member's raw predictor, scale and columns of the version's input matrix (None: all of
        them), the version's own booster first (one unless a blend)."""
        names = self.encoder.names
        out: list[Member] = [(self.raw, self.scale, None)]
        for booster, scale in self.others:
            own = list(booster.feature_name())
            cols = None if own == names else np.array([names.index(f) for f in own], dtype=np.intp)
            out.append((RawPredictor(booster), scale, cols))
        return out

    @property
    def features(self) -> list[str]:
        return self.encoder.names

    def flatten(self) -> FlatTrees:
        """Its members' trees as ``cityml.trees`` walks them, checked bit for bit against LightGBM on probe
        rows. Raises ``cityml.trees.Unsupported`` saying why where the loop cannot stand in for LightGBM.

        Each member's text holds the iterations its :class:`RawPredictor` predicts with (its best).
        """
        from cityml import trees

        members = self.members
        texts = [raw.booster.model_to_string(num_iteration=raw.iteration or -1) for raw, _, _ in members]
        flat = trees.flatten(texts, [cols for _, _, cols in members])
        lightgbm = [functools.partial(_member_raw, raw, cols) for raw, _, cols in members]
        wrong = trees.mismatch(flat, lightgbm, len(self.encoder.names))
        if wrong is not None:
            raise trees.Unsupported(f"{self.name} v{self.version}: the flat trees differ from LightGBM: {wrong}")
        return flat

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions in the label's units (``cityml.modeling``), the base's added in for a pooled model."""
        return self.predict_columns({name: frame[name].to_numpy() for name in frame.columns}, len(frame))

    def predict_columns(self, columns: Mapping[str, Any], n: int) -> np.ndarray:
        """:meth:`predict` on feature columns by name (``city`` among them for fleet and pooled models)."""
        cities = columns.get(CITY_FEATURE)
        if cities is None and (self.base is not None or CITY_FEATURE in self.encoder.names):
            cities = np.full(n, self.tags.get("city"), dtype=object)
            columns = {**columns, CITY_FEATURE: cities}
        base = self.base.predict_columns(columns, n) if self.base is not None else None
        x = self.encoder.matrix(columns, n)
        km = columns.get("distance_km")
        return predict_members(self.members, x, km, cities, base, self.flat)

    def serves(self, city: str) -> bool:
        """Whether this model can answer for ``city`` (a fleet model only for cities it learned)."""
        return self.scale.covers(city) and (self.base is None or self.base.serves(city))


def _member_raw(raw: RawPredictor, cols: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    return raw(x if cols is None else x[:, cols])


#: Loaded base models by (name, version): every pooled city model of a run shares one fleet version.
Bases = dict[tuple[str, str], "LoadedModel"]


def load_champion(c: MlflowClient, name: str, bases: Bases | None = None) -> LoadedModel | None:
    """Load ``models:/<name>@champion`` as a LightGBM booster (native text format, no pickle)."""
    mv = champion(c, name)
    if mv is None:
        return None
    return load_version(c, mv, bases)


def load_version(c: MlflowClient, mv: ModelVersion, bases: Bases | None = None) -> LoadedModel:
    """Load one registered version as a LightGBM booster (by number: an alias may move meanwhile).

    A pooled version also loads the base version its tag names (from ``bases`` when held there,
    and kept there for the next one): that exact version, not today's fleet champion.
    """
    base = None
    if BASE_TAG in mv.tags:
        base_name, _, base_version = str(mv.tags[BASE_TAG]).rpartition("/")
        key = (base_name, base_version)
        cache: Bases = bases if bases is not None else {}
        if key not in cache:
            base_mv = _ask(f"{base_name} v{base_version}", lambda: c.get_model_version(base_name, base_version))
            if base_mv is None:
                raise UnsafeModelError(f"{mv.name} v{mv.version}: its base {base_name} v{base_version} does not exist")
            cache[key] = load_version(c, base_mv, cache)
        base = cache[key]
    files = VersionFiles(c, mv)
    try:
        booster = _native_booster(files)
        scale = version_scale(c, mv, files)
        others = _blend_members(files, booster, scale, mv)
        selftest = _read_json(files.file(SELFTEST_FILE))
    finally:
        files.close()  # all parsed: nothing a remote store sent outlives the load
    loaded = LoadedModel(
        name=mv.name,
        version=str(mv.version),
        booster=booster,
        tags=dict(mv.tags),
        run_id=mv.run_id,
        scale=scale,
        base=base,
        files=files,
        others=others,
        selftest=selftest,
    )
    loaded.encoder  # noqa: B018 -- built now: a model whose categories do not add up fails to load, not to predict
    loaded.members  # noqa: B018 -- and its single-row predictors prepared before it serves
    return loaded


def _blend_members(
    files: VersionFiles, first: lgb.Booster, scale: LabelScale, mv: ModelVersion
) -> list[tuple[lgb.Booster, LabelScale]]:
    """A blended version's members after its first (``cityml.modeling``): none unless it has a ``blend`` tag.

    One input matrix, the first booster's, feeds them all: each member must read some of its
    features (all, or a narrower set: ``training.fit``) with the same category lists, so that a
    zone's code means the same zone to every member. A member file that is missing, reads a feature
    the first does not, or codes a category otherwise refuses the version.
    """
    import lightgbm as lgb

    kinds = [k for k in str(mv.tags.get(BLEND_TAG, "")).split(",") if k]
    label = f"{mv.name} v{mv.version}"
    if kinds and kinds[0] != scale.kind:
        raise UnsafeModelError(f"{label}: blend tag {kinds} does not start with its label_scale {scale.kind!r}")
    others = []
    for i, kind in enumerate(kinds[1:], start=1):
        path = files.file(MEMBER_FILE.format(i=i))
        if path is None:
            raise UnsafeModelError(f"{label}: blend member {i} ({MEMBER_FILE.format(i=i)}) is missing")
        try:
            member = lgb.Booster(model_file=str(path))
            member_scale = LabelScale(kind, scale.city_rates)  # type: ignore[arg-type]
        except (lgb.basic.LightGBMError, ValueError) as exc:
            raise UnsafeModelError(f"{label}: blend member {i} is unreadable: {exc}") from exc
        problem = _member_mismatch(member, first)
        if problem:
            raise UnsafeModelError(f"{label}: blend member {i} {problem}")
        others.append((member, member_scale))
    return others


def _member_mismatch(member: lgb.Booster, first: lgb.Booster) -> str | None:
    """Why a blend member cannot read the first booster's input matrix, or None when it can."""
    names = list(first.feature_name())
    own = list(member.feature_name())
    unknown = [f for f in own if f not in names]
    if unknown or len(set(own)) != len(own):
        return f"reads features the model does not: {', '.join(unknown) or 'a feature twice'}"
    lists = dict(zip([n for n in names if n in CATEGORICAL_FEATURES], first.pandas_categorical or [], strict=False))
    own_cats = [n for n in own if n in CATEGORICAL_FEATURES]
    member_lists = member.pandas_categorical or []
    if len(member_lists) != len(own_cats) or any(
        lists.get(n) != values for n, values in zip(own_cats, member_lists, strict=False)
    ):
        return "codes categories otherwise than the model"
    return None


#: Rows and the predictions the model made of them when registered: a loaded version must repeat them.
SELFTEST_FILE = "selftest.json"


def selftest_doc(columns: Mapping[str, Any], predictions: np.ndarray) -> dict[str, Any]:
    """The self-test artifact: input columns (JSON values, NaN as null) and the predictions made of them."""

    def value(v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v
        f = float(v)
        return None if np.isnan(f) else f

    return {
        "columns": {name: [value(v) for v in col] for name, col in columns.items()},
        "predictions": [float(p) for p in predictions],
    }


def self_test(model: LoadedModel, rtol: float = 1e-6) -> str | None:
    """Why ``model`` must not serve, or None when it repeats the predictions recorded at registration
    (its :data:`SELFTEST_FILE`, read by :func:`load_version`)."""
    doc = model.selftest
    if doc is None:
        return f"no {SELFTEST_FILE} recorded with the version"
    try:
        raw = doc["columns"]
        expected = np.asarray(doc["predictions"], dtype="float64")
        n = len(expected)
        columns = {
            name: np.array([np.nan if v is None else v for v in col], dtype=float)
            if all(v is None or isinstance(v, int | float) for v in col)
            else np.array(col, dtype=object)
            for name, col in raw.items()
        }
        got = model.predict_columns(columns, n)
    except (KeyError, TypeError, ValueError) as exc:
        return f"self-test could not run: {type(exc).__name__}: {exc}"
    if got.shape != expected.shape or not np.all(np.isfinite(got)):
        return f"self-test: {int(np.sum(~np.isfinite(got)))} of {n} predictions are not numbers"
    if not np.allclose(got, expected, rtol=rtol, atol=1e-9):
        worst = int(np.argmax(np.abs(got - expected)))
        return f"self-test: predicts {got[worst]:.6g} for row {worst}, recorded {expected[worst]:.6g} at registration"
    return None


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path) as fh:
        return dict(json.load(fh))


#: Where a version keeps the files it serves with (``selftest.json``, a blend's members, a fleet model's rates):
#: a folder of its MLflow model, listed under this key of the MLmodel file's ``metadata``.
MODEL_FILES_DIR = "cityml"
MODEL_FILES_KEY = "cityml_files"


class VersionFiles:
    """Where a registered version's files are: its model's folder (MLmodel, the booster, the files it
    serves with) and, for versions logged before those moved there, its run's artifacts.

    One registry read finds the model (the version's download URI: its storage location, a single
    row); MLmodel lists the files logged with it (:data:`MODEL_FILES_KEY`), so a load reads no run.
    A run's record (its params, tags and every metric) was the costliest read of a load: at 2,000
    champions, a quarter of the time the loader threads held the GIL.

    Read in place when the artifact store is a local folder. From any other store (an MLflow
    server's proxied artifacts, S3...) only the files a load reads are downloaded: MLmodel, the
    booster file it names (after the flavor check) and each file asked for.
    """

    def __init__(self, c: MlflowClient, mv: ModelVersion) -> None:
        self._client = c
        self._mv = mv
        self.label = f"{mv.name} v{mv.version}"
        self._fetched: Path | None = None  # the folder files from a remote store were downloaded to

    @cached_property
    def _location(self) -> str:
        # The registry client's own read: MlflowClient's first reads the whole registered model (with
        # every version) to check the name is not a prompt, 6x the cost of this read and a third of the
        # GIL loading 2,000 versions held. A name from the registry's model listing is not a prompt.
        registry = self._client._get_registry_client()
        name, version = str(self._mv.name), str(self._mv.version)
        found = _ask(f"{self.label}'s location", lambda: registry.get_model_version_download_uri(name, version))
        if not found:
            raise UnsafeModelError(f"{self.label}: the registry gives no location for its model")
        return str(found)

    @cached_property
    def _in_place(self) -> Path | None:
        """The model's folder when the artifact store is on this machine (None: a remote store)."""
        return _local_dir(self._location)

    @cached_property
    def model_folder(self) -> Path:
        """The folder holding MLmodel (and, read in place, the rest of the model)."""
        if self._in_place is not None:
            return self._in_place
        folder = self._scratch() / "model"
        self._download("MLmodel", folder)
        return folder

    def _scratch(self) -> Path:
        """The temporary folder files from a remote store go to, until :meth:`close`."""
        import tempfile

        if self._fetched is None:
            self._fetched = Path(tempfile.mkdtemp(prefix="cityml-model-"))
        return self._fetched

    def close(self) -> None:
        """Delete what was downloaded from a remote store (the model's files and its run's): a server loading
        2,000 six-booster models kept 10 GB of them in its temporary folder. A store read in place is left alone."""
        import shutil

        if self._fetched is not None:
            shutil.rmtree(self._fetched, ignore_errors=True)
            self._fetched = None
            self.__dict__.pop("model_folder", None)

    @cached_property
    def mlmodel(self) -> dict[str, Any]:
        return _read_mlmodel(self.model_folder, self.label)

    def booster_file(self) -> Path:
        """The booster's LightGBM text file, once MLmodel says it is one (:func:`_booster_data`)."""
        data = _booster_data(self.mlmodel, self.label)
        if self._in_place is None:
            self._download(data, self.model_folder)
        return self.model_folder / data

    @cached_property
    def _listed(self) -> frozenset[str] | None:
        """The files logged with the model (None: a version from before, its files are with its run)."""
        metadata = self.mlmodel.get("metadata") or {}
        listed = metadata.get(MODEL_FILES_KEY) if isinstance(metadata, dict) else None
        if listed is None:
            return None
        if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
            raise UnsafeModelError(f"{self.label}: MLmodel metadata {MODEL_FILES_KEY} is not a list of file names")
        return frozenset(listed)

    def file(self, name: str) -> Path | None:
        """A file the version serves with (``selftest.json``, ``members/1.txt``...), or None when it has none.

        ``name`` is one of cityml's own file names; the listing only says whether the model has it.
        A listed file that a remote store fails to send is an outage (:class:`RegistryError`: the
        version is tried again at the next refresh), not a version without the file.
        """
        if self._listed is None:
            return self.run_file(name)
        if name not in self._listed:
            return None
        relative = f"{MODEL_FILES_DIR}/{name}"
        if self._in_place is None:
            self._download(relative, self.model_folder)
        path = self.model_folder / relative
        return path if path.is_file() else None

    def _download(self, relative: str, folder: Path) -> None:
        """One file of the model from a remote store into ``folder`` at the same relative path, read through
        :func:`_ask`: a store that fails to answer (the network, an outage code) raises :class:`RegistryError`."""
        import mlflow.artifacts

        into = folder / PurePosixPath(relative).parent
        into.mkdir(parents=True, exist_ok=True)
        uri = f"{self._location.rstrip('/')}/{relative}"
        _ask(
            f"{self.label}'s {relative}",
            lambda: mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)),
        )

    @cached_property
    def _run_artifacts(self) -> str | None:
        run = _ask(f"run {self._mv.run_id}", lambda: self._client.get_run(str(self._mv.run_id)))
        return str(run.info.artifact_uri) if run is not None else None

    def run_file(self, name: str) -> Path | None:
        """A file the version's run logged (older versions' serving files), or None; from a remote store it is
        downloaded into this version's temporary folder, deleted by :meth:`close`."""
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        if not self._mv.run_id or self._run_artifacts is None:
            return None
        folder = _local_dir(self._run_artifacts)
        if folder is not None:
            path = folder / name
            return path if path.is_file() else None
        into = self._scratch() / "run"
        into.mkdir(exist_ok=True)
        uri = f"{self._run_artifacts.rstrip('/')}/{name}"
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
        except (MlflowException, OSError):
            return None

    def run_json(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the version's run (its reference profile), parsed; None when the run has none.
        Nothing downloaded for it is kept."""
        try:
            return _read_json(self.run_file(name))
        finally:
            self.close()


def _local_dir(uri: str | None) -> Path | None:
    """The folder an artifact URI names when it is on this machine (``file://`` or a plain path)."""
    from urllib.parse import unquote, urlparse

    if not uri:
        return None
    if uri.startswith("file:"):
        path = Path(unquote(urlparse(uri).path))
    elif "://" not in uri and ":" not in uri.split("/")[0]:
        path = Path(uri)
    else:
        return None
    return path if path.is_dir() else None


class UnsafeModelError(ValueError):
    """A registered version that is not a LightGBM Booster in LightGBM's text format: never loaded."""


def _read_mlmodel(folder: Path, label: str) -> dict[str, Any]:
    """The version's MLmodel file, parsed (:class:`UnsafeModelError` when there is none to read)."""
    import yaml

    try:
        # libyaml's safe loader when present: the pure-Python one took ~3 ms per model at startup.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load((folder / "MLmodel").read_text(), Loader=loader)
    except (OSError, yaml.YAMLError) as exc:
        raise UnsafeModelError(f"{label}: no readable MLmodel file ({exc})") from exc
    if not isinstance(doc, dict):
        raise UnsafeModelError(f"{label}: MLmodel is not a mapping")
    return doc


def _booster_data(mlmodel: dict[str, Any], label: str) -> str:
    """The booster file an MLmodel names, relative to the model's folder, once the flavor is checked.

    ``mlflow.lightgbm.load_model`` unpickles the sklearn-API flavor (``LGBMRegressor``), so a
    version registered that way could run code in whatever loads it. Only
    ``model_class: lightgbm.basic.Booster`` (what cityml registers) with a data file inside the model is
    accepted; :class:`UnsafeModelError` otherwise.
    """
    flavors = mlmodel.get("flavors")
    flavor = flavors.get("lightgbm") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict) or flavor.get("model_class") != "lightgbm.basic.Booster":
        got = flavor.get("model_class") if isinstance(flavor, dict) else "no lightgbm flavor"
        raise UnsafeModelError(f"{label}: {got} is not a LightGBM Booster in text format; refused")
    data = str(flavor.get("data") or "")
    path = PurePosixPath(data)
    if not data or path.is_absolute() or ".." in path.parts or "\\" in data:
        raise UnsafeModelError(f"{label}: model file {flavor.get('data')!r} is not inside the model")
    return data


def _native_booster(files: VersionFiles) -> lgb.Booster:
    """The version's booster, read from LightGBM's own text file (:func:`_booster_data`), never through a pickle."""
    import lightgbm as lgb

    data = files.booster_file().resolve()
    if files.model_folder.resolve() not in data.parents or not data.is_file():
        raise UnsafeModelError(f"{files.label}: model file {data.name!r} is not inside the model")
    return lgb.Booster(model_file=str(data))


def read_profile(c: MlflowClient, mv: ModelVersion) -> dict[str, Any]:
    """The reference profile saved with a model version's training run."""
    profile = VersionFiles(c, mv).run_json(PROFILE_FILE)
    if profile is None:
        raise FileNotFoundError(f"{mv.name} v{mv.version} has no {PROFILE_FILE} with its run")
    return profile
