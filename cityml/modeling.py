"""How a model predicts: its input frame, its label scale, its output. One place for training, serving and monitoring.

A cityml model is a LightGBM booster plus a :class:`LabelScale`, the rule that turns the label into
what the booster learns and back:

- ``none``: the booster learns the label itself (seconds, or the fare in the city's currency).
- ``per_km``: it learns the label per km of the trip (a pace in s/km, a fare per km), and each row
  weighs its distance, so that the L1 loss on the scaled label *is* the absolute error in seconds or
  currency. A trip's pace depends on zones and hours, its length mostly does not: trees fit that
  better than a duration that grows with distance. A trip of unknown length has no prediction
  (serving asks for ``distance_km`` or the coordinates). City models try it, ``per_sqrt_km``
  and ``none`` (and their blend) and keep what their validation window picks (``training.fit``).
- ``per_sqrt_km``: it learns the label per square root of the km, weighted by that root: between
  the two above. A fare is a flag fall plus a rate per km, a short trip's duration is mostly
  waiting: neither is proportional to the distance, nor independent of it.
- ``per_km_city``: the fleet (global) models also divide by each city's median label per km, so
  they learn a currency-free ratio (a fare in Jakarta's rupiah and one in Lisbon's euros become
  comparable) and convert back per city. A city whose rate the model does not hold cannot be
  served by it (:meth:`LabelScale.covers`): guessing a currency is worse than no answer.

The scale of a registered version is its ``label_scale`` tag (and, for ``per_km_city``, the rates
in the ``label_scale.json`` artifact). Versions from before the tag predict with ``none``.

A *blended* model is several boosters learned on the same features and rows, each under its own
scale, answering the mean of their predictions (:func:`blend`): their errors differ, the mean's is
smaller (bench/RESULTS.md, quality). The first booster is the version's MLflow model; the others
are LightGBM text files logged with it (:data:`MEMBER_FILE`, ``cityml.registry.VersionFiles``), their scales in order in
the ``blend`` tag.
"""

from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from cityml.features.request_features import CITY_LOCAL_FEATURES

if TYPE_CHECKING:
    import lightgbm as lgb

    from cityml.trees import FlatTrees

CITY_FEATURE = "city"  # the fleet (global) models' categorical feature
CATEGORICAL_FEATURES: frozenset[str] = frozenset({CITY_FEATURE, *CITY_LOCAL_FEATURES})
#: Shorter trips count as this many km: a 50 m trip's pace is noise, and its weight should not vanish.
MIN_KM = 0.5
SCALE_TAG = "label_scale"
SCALE_FILE = "label_scale.json"
#: A pooled city model's tag naming its base model, ``<name>/<version>`` (e.g. ``eta-global/7``).
BASE_TAG = "base_model"
#: A blended version's tag: its members' scales in order, comma-separated (the first is the MLflow model's).
BLEND_TAG = "blend"
#: File of a blended version's member ``i`` (from 1; member 0 is the MLflow model), logged with the model.
MEMBER_FILE = "members/{i}.txt"

ScaleKind = Literal["none", "per_sqrt_km", "per_km", "per_km_city"]
SCALE_KINDS: tuple[ScaleKind, ...] = ("none", "per_sqrt_km", "per_km", "per_km_city")


@dataclass(frozen=True)
class LabelScale:
    """What the booster learns instead of the label: ``label / denominator(row)``."""

    kind: ScaleKind = "none"
    city_rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SCALE_KINDS:
            raise ValueError(f"unknown label scale {self.kind!r}: expected one of {', '.join(SCALE_KINDS)}")

    def denominator(self, frame: pd.DataFrame) -> np.ndarray:
        """Per-row divisor of the label; NaN for a city without a rate (``per_km_city``)."""
        cities = frame[CITY_FEATURE].to_numpy() if self.kind == "per_km_city" else None
        return self.divisor(frame["distance_km"].to_numpy() if self.kind != "none" else None, cities, len(frame))

    def divisor(self, distance_km: np.ndarray | None, cities: np.ndarray | None, n: int) -> np.ndarray:
        """:meth:`denominator` on columns: trip km and (``per_km_city``) city slugs of ``n`` rows."""
        if self.kind == "none":
            return np.ones(n)
        km = np.maximum(np.asarray(distance_km, dtype="float64"), MIN_KM)
        if self.kind == "per_km":
            return km
        if self.kind == "per_sqrt_km":
            return np.sqrt(km)
        rates = self.city_rates
        return km * np.array([rates.get(str(c), np.nan) for c in np.asarray(cities)], dtype="float64")

    def encode(self, y: pd.Series | np.ndarray, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """The booster's target and row weights (None: unweighted) for labels ``y`` of ``frame``'s rows.

        ``per_km`` and ``per_sqrt_km`` weigh each row by its divisor: the weighted L1 then equals the
        label's absolute error. ``per_km_city`` weighs it by its km: that error relative to the
        city's rate, so every city counts alike whatever its currency.
        """
        y = np.asarray(y, dtype="float64")
        if self.kind == "none":
            return y, None
        divisor = self.denominator(frame)
        if self.kind != "per_km_city":
            return y / divisor, divisor
        return y / divisor, np.maximum(frame["distance_km"].to_numpy(dtype="float64"), MIN_KM)

    def init_score(self, base: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """A base model's predictions (label units) as a starting score in this scale."""
        return np.asarray(base, dtype="float64") / self.denominator(frame)

    def decode(self, raw: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(raw, dtype="float64") * self.denominator(frame)

    def covers(self, city: str) -> bool:
        """Whether predictions for ``city`` can be put back in its units."""
        return self.kind != "per_km_city" or city in self.city_rates

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "city_rates": self.city_rates}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LabelScale:
        rates = {str(k): float(v) for k, v in doc.get("city_rates", {}).items()}
        return cls(kind=doc.get("kind", "none"), city_rates=rates)

    @classmethod
    def from_tags(cls, tags: dict[str, str], rates_file: str | None = None) -> LabelScale:
        """The scale of a registered version: its tag, and its rates file for ``per_km_city``."""
        kind = tags.get(SCALE_TAG, "none")
        if kind == "per_km_city":
            if rates_file is None:
                raise ValueError(f"label scale {kind} needs its {SCALE_FILE}")
            with open(rates_file) as fh:
                return cls.from_json(json.load(fh))
        return cls(kind=kind)  # type: ignore[arg-type]


#: Per-node statistics of LightGBM's text format that training keeps and predicting never reads (gains, hessian
#: sums, row counts, internal outputs: for feature importance, SHAP values and continued training).
TRAINING_STATISTICS = ("split_gain", "internal_value", "internal_weight", "internal_count", "leaf_weight", "leaf_count")


def prediction_text(booster: lgb.Booster) -> str:
    """The booster in LightGBM's text format without :data:`TRAINING_STATISTICS`: the same trees, the same answers.

    A blend's members after the first are stored this way (the first, the MLflow model, whole): the
    statistics are 40-50% of a tree's text, and parsing them a third of the time a server spent loading
    a six-member blend. The header's ``tree_sizes`` (byte offsets of the full trees) goes too:
    LightGBM then finds the trees by reading them in order. What a stored member loses: its SHAP
    values (``pred_contrib``) and gain importance; the first booster keeps both.
    """
    out = []
    in_trees = False
    drop = tuple(f"{k}=" for k in TRAINING_STATISTICS)
    for line in booster.model_to_string().split("\n"):
        if line.startswith("Tree="):
            in_trees = True
        elif line == "end of trees":
            in_trees = False
        elif (in_trees and line.startswith(drop)) or (not in_trees and line.startswith("tree_sizes=")):
            continue
        out.append(line)
    return "\n".join(out)


def model_frame(features: pd.DataFrame, model_features: list[str], cities: pd.Series | None = None) -> pd.DataFrame:
    """The columns a booster expects, in its order, categoricals as pandas categories.

    LightGBM keeps the category list it was trained with and maps values by name, so a city or a
    zone it never saw becomes a missing value rather than another one's code.
    """
    frame = features
    if CITY_FEATURE in model_features and cities is not None:
        frame = frame.assign(**{CITY_FEATURE: cities.astype(str)})
    out = frame[model_features].copy()
    for name in model_features:
        if name in CATEGORICAL_FEATURES and not isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = pd.Categorical(out[name].where(out[name].notna(), None))
    return out


class FeatureEncoder:
    """A booster's input as a float matrix, built from feature columns without pandas.

    Numbers go in as they are. A categorical feature (city, zones) goes in as the code LightGBM
    gave its value at training (``booster.pandas_categorical``, the category lists in the order of
    the categorical columns); a value it never saw, or None, becomes NaN, exactly as LightGBM's own
    pandas path maps it. Built once per loaded model; serving reuses it for every request.
    """

    def __init__(self, booster: lgb.Booster) -> None:
        self.names: list[str] = list(booster.feature_name())
        categorical = [n for n in self.names if n in CATEGORICAL_FEATURES]
        lists = booster.pandas_categorical or []
        if len(lists) != len(categorical):
            raise ValueError(
                f"model has {len(lists)} category lists for {len(categorical)} categorical features ({categorical})"
            )
        self.codes: dict[str, dict[str, float]] = {
            name: {str(v): float(i) for i, v in enumerate(values)}
            for name, values in zip(categorical, lists, strict=True)
        }

    def matrix(self, columns: Mapping[str, Any], n: int) -> np.ndarray:
        """``n`` rows × the booster's features, from columns by name (arrays or lists of length ``n``)."""
        missing = [name for name in self.names if name not in columns]
        if missing:
            raise KeyError(f"model needs features the frame lacks: {', '.join(missing)}")
        x = np.empty((n, len(self.names)), dtype="float64")
        for j, name in enumerate(self.names):
            codes = self.codes.get(name)
            if codes is None:
                x[:, j] = np.asarray(columns[name], dtype="float64")
            else:
                x[:, j] = [codes.get(str(v), np.nan) if _present(v) else np.nan for v in columns[name]]
        return x


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


#: Up to this many rows, a served model predicts row by row through LightGBM's single-row path.
FAST_ROWS = 16


def one_thread_per_call() -> None:
    """Cap LightGBM at one OpenMP thread in this process (a server: never where models train).

    A server's parallelism is its requests and its loader threads (``serving.model_store``). Parsing
    a booster's text file fanned out over OpenMP threads that spun waiting for each other: 39 ms of
    CPU for a six-booster model against 28 ms on one thread, and the loader runs several at once.
    The cap binds every LightGBM call of the process, ``num_threads`` given or not.
    """
    from lightgbm.basic import _LIB, _safe_call

    _safe_call(_LIB.LGBM_SetMaxThreads(ctypes.c_int(1)))


@functools.cache
def _gil_holding_lib() -> ctypes.PyDLL:
    """LightGBM's library through a handle whose calls keep the GIL (``ctypes.PyDLL``), for single rows.

    A single-row predict takes microseconds. Through LightGBM's own ``CDLL`` handle each call let go
    of the GIL and then waited to take it back, often from the prediction log's writer thread: six
    such waits for a blend of six were a request's tail (served p99 27 -> 20 ms when kept).
    """
    from lightgbm.basic import _LIB

    return ctypes.PyDLL(_LIB._name)


class RawPredictor:
    """A booster's raw output for an encoded matrix, as ``booster.predict(x, num_threads=1)`` gives it.

    ``booster.predict`` sets up a predictor on every call, about 0.1 ms, more than a few rows of
    trees cost. For up to :data:`FAST_ROWS` rows this goes through LightGBM's single-row C API with a
    configuration prepared once (``LGBM_BoosterPredictForMatSingleRowFast``): the same trees, the same
    C++ predictor, a tenth of the time. LightGBM serializes single-row calls on one booster with its
    own lock, so threads may share a predictor. Larger inputs go through ``booster.predict``.

    The booster itself keeps the single-row predictor this prepares: every ``RawPredictor`` of one
    booster must use the same iteration (the booster's best), as they all do here.
    """

    def __init__(self, booster: lgb.Booster) -> None:
        from lightgbm.basic import _LIB, _c_str, _safe_call

        self.booster = booster
        self.iteration = booster.best_iteration or None
        self._lib = _gil_holding_lib()
        self._check = _safe_call
        self._ctypes = ctypes
        handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(0),  # C_API_PREDICT_NORMAL
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(self.iteration or -1),
                ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
                ctypes.c_int32(booster.num_feature()),
                _c_str("num_threads=1"),
                ctypes.byref(handle),
            )
        )
        self._fast = handle

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) > FAST_ROWS:  # one thread: a request's rows are few, LightGBM's pool costs more
            return np.asarray(self.booster.predict(x, num_iteration=self.iteration, num_threads=1), dtype="float64")
        ctypes, check = self._ctypes, self._check
        rows = np.ascontiguousarray(x, dtype="float64")
        out = np.empty(len(rows), dtype="float64")
        length = ctypes.c_int64()
        target = out.ctypes.data
        for i in range(len(rows)):
            check(
                self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                    self._fast,
                    ctypes.c_void_p(rows[i].ctypes.data),
                    ctypes.byref(length),
                    ctypes.c_void_p(target + 8 * i),
                )
            )
        return out

    def __del__(self) -> None:
        handle = getattr(self, "_fast", None)
        if handle is not None and handle.value:
            self._lib.LGBM_FastConfigFree(handle)
            handle.value = None


def predict_matrix(
    raw_predictor: RawPredictor,
    scale: LabelScale,
    x: np.ndarray,
    distance_km: np.ndarray | None,
    cities: np.ndarray | None,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Predictions in the label's units from an encoded matrix (:class:`FeatureEncoder`).

    ``base``: for a pooled model, the base model's predictions of the same rows (label units); the
    booster learned a correction to them, starting from them as its initial score.

    Clipped at 0: a duration or a fare is never negative. NaN where the scale cannot convert back:
    a per-km model for a trip of unknown length, a fleet model for a city it has no rate for.
    """
    return predict_members([(raw_predictor, scale, None)], x, distance_km, cities, base)


Member = tuple[RawPredictor, LabelScale, "np.ndarray | None"]  # a booster, its scale, its columns of x (None: all)


def predict_members(
    members: Sequence[Member],
    x: np.ndarray,
    distance_km: np.ndarray | None,
    cities: np.ndarray | None,
    base: np.ndarray | None = None,
    flat: FlatTrees | None = None,
) -> np.ndarray:
    """A blend's answer: the :func:`blend` of :func:`predict_matrix` of each member on its columns of ``x``.

    Members that share a scale share its divisor, computed once (a served request is a few rows,
    where numpy's per-call cost is most of the arithmetic). ``flat``: the members' trees in
    ``cityml.trees``' compiled loop, which gives their raw scores bit for bit, faster.
    """
    divisors: dict[object, np.ndarray] = {}
    predictions = []
    raws = flat.raw(x) if flat is not None else None
    for m, (raw_predictor, scale, cols) in enumerate(members):
        raw = raws[m] if raws is not None else raw_predictor(x if cols is None else x[:, cols])
        key = id(scale) if scale.city_rates else scale.kind
        divisor = divisors.get(key)
        if divisor is None:
            divisor = divisors[key] = scale.divisor(distance_km, cities, len(x))
        if base is not None:
            raw = raw + np.asarray(base, dtype="float64") / divisor
        predictions.append(np.maximum(raw * divisor, 0.0))
    return blend(predictions)


def blend(predictions: Sequence[np.ndarray]) -> np.ndarray:
    """A blended model's answer from its members' predictions (label units): their mean.

    NaN where any member has none (a per-km member for a trip of unknown length): no half answers.
    """
    if len(predictions) == 1:
        return np.asarray(predictions[0], dtype="float64")
    total = np.array(predictions[0], dtype="float64")  # summed in order, as np.mean over axis 0 does
    for p in predictions[1:]:
        total += p
    return total / len(predictions)


def predict(booster: lgb.Booster, scale: LabelScale, frame: pd.DataFrame, base: np.ndarray | None = None) -> np.ndarray:
    """:func:`predict_matrix` for rows of a frame holding the booster's features (and ``city``).

    Raises ``KeyError`` naming the features the frame lacks.
    """
    columns = {name: frame[name].to_numpy() for name in frame.columns}
    x = FeatureEncoder(booster).matrix(columns, len(frame))
    cities = columns.get(CITY_FEATURE)
    return predict_matrix(RawPredictor(booster), scale, x, columns.get("distance_km"), cities, base)
