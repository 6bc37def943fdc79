"""Loading a registered version never unpickles: only a LightGBM Booster in text format is read."""

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from cityml.modeling import model_frame
from cityml.registry import UnsafeModelError, VersionFiles, client, load_version
from cityml.settings import Settings


def _register(settings: Settings, name: str, model: object) -> object:
    import mlflow
    import mlflow.lightgbm

    from training.registry import experiment_id

    c = client(settings)
    with mlflow.start_run(experiment_id=experiment_id(c, settings)):
        info = mlflow.lightgbm.log_model(model, name="model")
    version = mlflow.register_model(info.model_uri, name)
    return c.get_model_version(name, version.version)


def test_a_booster_loads_and_an_sklearn_pickle_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), rng.normal(size=200)
    booster = lgb.train({"verbosity": -1, "num_threads": 1}, lgb.Dataset(x, y), num_boost_round=5)

    ok = _register(settings, "eta-safe", booster)
    loaded = load_version(client(settings), ok)  # type: ignore[arg-type]
    np.testing.assert_allclose(loaded.booster.predict(x), booster.predict(x))

    pickled = _register(settings, "eta-pickled", lgb.LGBMRegressor(n_estimators=5, verbosity=-1).fit(x, y))
    with pytest.raises(UnsafeModelError, match=r"eta-pickled v1: lightgbm\.sklearn\.LGBMRegressor"):
        load_version(client(settings), pickled)  # type: ignore[arg-type]


class _Payload:
    """Unpickling this writes a file: the proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("model_class", ["lightgbm.sklearn.LGBMRegressor", "lightgbm.basic.Booster"])
def test_a_registered_pickle_that_would_run_code_is_never_opened(tmp_path: Path, model_class: str) -> None:
    """A version whose files are rewritten to a pickle payload (MLflow would unpickle it): never opened.

    Whether its MLmodel names the sklearn flavor (refused) or claims a Booster (LightGBM's text parser
    rejects the bytes), nothing unpickles the payload.
    """
    import pickle

    import yaml

    settings = Settings(home=tmp_path / "var")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 3)), rng.normal(size=100)
    mv = _register(settings, "eta-evil", lgb.LGBMRegressor(n_estimators=3, verbosity=-1).fit(x, y))
    c = client(settings)
    folder = Path(c.get_model_version_download_uri("eta-evil", "1").removeprefix("file://"))
    marker = tmp_path / "unpickled"
    (folder / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    meta = yaml.safe_load((folder / "MLmodel").read_text())
    meta["flavors"]["lightgbm"].update(data="model.pkl", serialization_format="pickle", model_class=model_class)
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))

    with pytest.raises(Exception, match=r"eta-evil|model|Booster|parse|format"):
        load_version(c, mv)  # type: ignore[arg-type]
    assert not marker.exists()


def _blended_version(
    settings: Settings, name: str = "eta-blend", narrow: bool = False
) -> tuple[object, pd.DataFrame, np.ndarray]:
    """A three-member blend registered the way training registers it, and what it predicted before;
    with ``narrow``, a fourth member reads the zone alone (``training.fit``)."""
    from cityml.modeling import LabelScale
    from cityml.registry import selftest_doc
    from training.fit import Fitted
    from training.registry import experiment_id, log_version

    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {"distance_km": rng.uniform(0.2, 20, 300), "pickup_zone": rng.choice(["a", "b", "c"], 300)}
    ).assign(duration_s=lambda f: f.distance_km * f.pickup_zone.map({"a": 90, "b": 150, "c": 240}) + 60)
    features = ["distance_km", "pickup_zone"]
    members = []
    for kind in ("per_km", "per_sqrt_km", "none"):
        scale = LabelScale(kind)  # type: ignore[arg-type]
        y, w = scale.encode(frame["duration_s"], frame)
        data = lgb.Dataset(model_frame(frame, features), y, weight=w)
        members.append((lgb.train({"verbosity": -1, "num_threads": 1}, data, num_boost_round=20), scale))
    if narrow:
        data = lgb.Dataset(model_frame(frame, ["pickup_zone"]), frame["duration_s"])
        members.append((lgb.train({"verbosity": -1, "num_threads": 1}, data, num_boost_round=20), LabelScale()))
    fitted = Fitted(members[0][0], members[0][1], 20, False, others=members[1:])
    c = client(settings)
    head = frame.head(20)
    selftest = selftest_doc({f: head[f].to_numpy() for f in features}, fitted.predict(head))
    log_version(
        c, experiment_id(c, settings), name, fitted.members, frame, features, {"mae": 1.0}, {}, {}, {}, None, selftest
    )
    return c.get_model_version(name, "1"), frame, fitted.predict(frame)


def test_a_blend_loads_with_every_member_and_predicts_what_training_predicted(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var")
    mv, frame, before = _blended_version(settings)
    assert mv.tags["blend"] == "per_km,per_sqrt_km,none" and mv.tags["label_scale"] == "per_km"  # type: ignore[attr-defined]
    loaded = load_version(client(settings), mv)  # type: ignore[arg-type]
    assert [s.kind for _, s, _ in loaded.members] == ["per_km", "per_sqrt_km", "none"]
    np.testing.assert_allclose(loaded.predict(frame), before, rtol=1e-9)


def test_a_load_reads_where_the_model_is_and_nothing_else_from_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files a version serves with are logged with its model and listed in its MLmodel: a load reads the
    version's location and no run (a run's record holds every metric: the costliest read of a load)."""
    import mlflow

    from cityml.registry import self_test

    settings = Settings(home=tmp_path / "var")
    mv, frame, before = _blended_version(settings)
    c = client(settings)
    files = VersionFiles(c, mv)  # type: ignore[arg-type]
    assert sorted(files.mlmodel["metadata"]["cityml_files"]) == ["members/1.txt", "members/2.txt", "selftest.json"]
    assert sorted(p.name for p in (files.model_folder / "cityml").rglob("*.*")) == ["1.txt", "2.txt", "selftest.json"]

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a load read more of the registry than the model's location")

    for read in ("get_run", "get_logged_model", "get_registered_model"):
        monkeypatch.setattr(mlflow.MlflowClient, read, refused)
    loaded = load_version(c, mv)  # type: ignore[arg-type]
    assert self_test(loaded) is None
    np.testing.assert_allclose(loaded.predict(frame), before, rtol=1e-9)


def test_from_a_remote_store_a_load_fetches_what_it_reads_and_a_failed_fetch_is_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MLflow server's proxied artifacts (or S3): MLmodel, the booster it names and the listed files, one at a
    time; a listed file the store fails to send is the registry's failure (tried again), not a missing member."""
    import shutil
    import tempfile

    import mlflow.artifacts
    from mlflow.tracking._model_registry.client import ModelRegistryClient

    from cityml.registry import RegistryError, self_test

    settings = Settings(home=tmp_path / "var")
    mv, frame, before = _blended_version(settings)
    c = client(settings)
    folder = VersionFiles(c, mv).model_folder  # type: ignore[arg-type]
    remote = "mlflow-artifacts:/1/models/m-1/artifacts"
    monkeypatch.setattr(ModelRegistryClient, "get_model_version_download_uri", lambda self, name, version: remote)
    fetched: list[str] = []
    failing: set[str] = set()

    def download(artifact_uri: str, dst_path: str) -> str:
        relative = artifact_uri.removeprefix(remote + "/")
        fetched.append(relative)
        if relative in failing:
            raise OSError("connection reset by peer")
        return str(shutil.copy(folder / relative, Path(dst_path) / Path(relative).name))

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = load_version(c, mv)  # type: ignore[arg-type]
    assert self_test(loaded) is None
    np.testing.assert_allclose(loaded.predict(frame), before, rtol=1e-9)
    assert sorted(fetched) == [
        "MLmodel",
        "cityml/members/1.txt",
        "cityml/members/2.txt",
        "cityml/selftest.json",
        "model.lgb",
    ]
    assert list(scratch.iterdir()) == []  # parsed, then deleted: 2,000 models left 10 GB behind

    failing.add("cityml/members/2.txt")
    with pytest.raises(RegistryError, match=r"eta-blend v1.s cityml/members/2\.txt: OSError: connection reset"):
        load_version(c, mv)  # type: ignore[arg-type]
    assert list(scratch.iterdir()) == []


def test_a_version_logged_before_its_files_moved_to_its_model_reads_them_from_its_run(tmp_path: Path) -> None:
    """Champions registered by an older cityml keep their self-test rows and blend members with their run."""
    import shutil

    import yaml

    from cityml.registry import self_test

    settings = Settings(home=tmp_path / "var")
    mv, frame, before = _blended_version(settings)
    c = client(settings)
    folder = VersionFiles(c, mv).model_folder  # type: ignore[arg-type]
    run_folder = Path(c.get_run(mv.run_id).info.artifact_uri.removeprefix("file://"))  # type: ignore[attr-defined]
    shutil.copytree(folder / "cityml", run_folder, dirs_exist_ok=True)
    shutil.rmtree(folder / "cityml")
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    del mlmodel["metadata"]
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    loaded = load_version(c, mv)  # type: ignore[arg-type]
    assert len(loaded.members) == 3 and self_test(loaded) is None
    np.testing.assert_allclose(loaded.predict(frame), before, rtol=1e-9)


def test_from_a_remote_store_files_read_from_a_run_are_deleted_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older version's self-test rows and members, and any version's reference profile (drift, the gate), live
    with its run: read from a remote store, they are deleted once parsed, like the model's own files."""
    import shutil
    import tempfile

    import mlflow.artifacts
    import yaml
    from mlflow.tracking._model_registry.client import ModelRegistryClient

    from cityml.registry import read_profile, self_test

    settings = Settings(home=tmp_path / "var")
    mv, frame, before = _blended_version(settings)
    c = client(settings)
    folder = VersionFiles(c, mv).model_folder  # type: ignore[arg-type]
    run = c.get_run(mv.run_id)  # type: ignore[arg-type]
    run_folder = Path(run.info.artifact_uri.removeprefix("file://"))
    shutil.copytree(folder / "cityml", run_folder, dirs_exist_ok=True)  # the older layout
    shutil.rmtree(folder / "cityml")
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    del mlmodel["metadata"]
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    remote_model, remote_run = "mlflow-artifacts:/1/models/m-1/artifacts", "mlflow-artifacts:/1/run-1/artifacts"
    monkeypatch.setattr(ModelRegistryClient, "get_model_version_download_uri", lambda self, n, v: remote_model)
    run.info._artifact_uri = remote_run
    monkeypatch.setattr(type(c), "get_run", lambda self, run_id: run)
    fetched: list[str] = []

    def download(artifact_uri: str, dst_path: str) -> str:
        fetched.append(artifact_uri)
        for remote, local in ((remote_model, folder), (remote_run, run_folder)):
            if artifact_uri.startswith(remote + "/"):
                source = local / artifact_uri.removeprefix(remote + "/")
                if not source.is_file():
                    raise OSError(f"{artifact_uri}: no such file")  # what the store answers for a missing file
                return str(shutil.copy(source, Path(dst_path) / source.name))
        raise AssertionError(artifact_uri)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = load_version(c, mv)  # type: ignore[arg-type]
    assert len(loaded.members) == 3 and self_test(loaded) is None
    np.testing.assert_allclose(loaded.predict(frame), before, rtol=1e-9)
    assert f"{remote_run}/members/2.txt" in fetched
    assert list(scratch.iterdir()) == []
    assert read_profile(c, mv) == json.loads((run_folder / "reference_profile.json").read_text())  # type: ignore[arg-type]
    assert f"{remote_run}/reference_profile.json" in fetched
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("listed", ["selftest.json", {"a": 1}, [1, 2]])
def test_an_mlmodel_whose_file_list_is_not_a_list_of_names_is_refused(tmp_path: Path, listed: object) -> None:
    import yaml

    settings = Settings(home=tmp_path / "var")
    mv, _, _ = _blended_version(settings)
    c = client(settings)
    folder = VersionFiles(c, mv).model_folder  # type: ignore[arg-type]
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["metadata"]["cityml_files"] = listed
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(UnsafeModelError, match="eta-blend v1: MLmodel metadata cityml_files is not a list"):
        load_version(c, mv)  # type: ignore[arg-type]


def test_a_blend_missing_a_member_or_with_a_stranger_is_refused_naming_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var")
    mv, _, _ = _blended_version(settings)
    c = client(settings)
    member = VersionFiles(c, mv).model_folder / "cityml" / "members" / "2.txt"  # type: ignore[arg-type]
    text = member.read_text()
    member.unlink()
    with pytest.raises(UnsafeModelError, match=r"eta-blend v1: blend member 2 \(members/2.txt\) is missing"):
        load_version(c, mv)  # type: ignore[arg-type]
    # A booster of other features in its place: one input matrix could not feed both.
    rng = np.random.default_rng(0)
    stranger = lgb.train({"verbosity": -1}, lgb.Dataset(rng.normal(size=(50, 3)), rng.normal(size=50)), 3)
    member.write_text(stranger.model_to_string())
    with pytest.raises(UnsafeModelError, match="blend member 2 reads features the model does not: Column_0"):
        load_version(c, mv)  # type: ignore[arg-type]
    member.write_text(text)
    assert load_version(c, mv).others  # type: ignore[arg-type]


def test_a_blend_member_may_read_fewer_features_but_must_code_zones_alike(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var")
    mv, frame, before = _blended_version(settings, narrow=True)
    c = client(settings)
    loaded = load_version(c, mv)  # type: ignore[arg-type]
    assert [b.feature_name() for b, _ in loaded.others][-1] == ["pickup_zone"]
    np.testing.assert_allclose(loaded.predict(frame), before, rtol=1e-9)
    # The same zone column learned where only zones a and b were seen: code 1 would be b to it, c to the model.
    member = VersionFiles(c, mv).model_folder / "cityml" / "members" / "3.txt"  # type: ignore[arg-type]
    two = frame[frame.pickup_zone != "c"]
    other = lgb.train({"verbosity": -1}, lgb.Dataset(model_frame(two, ["pickup_zone"]), two["duration_s"]), 5)
    member.write_text(other.model_to_string())
    with pytest.raises(UnsafeModelError, match="blend member 3 codes categories otherwise than the model"):
        load_version(c, mv)  # type: ignore[arg-type]


def test_a_second_process_creating_the_experiment_finds_it(tmp_path: Path) -> None:
    """Two first fits at once (two Celery workers) both try to create the experiment: the loser uses the winner's."""
    from unittest import mock

    from training.registry import experiment_id

    settings = Settings(home=tmp_path / "var")
    c = client(settings)
    first = experiment_id(c, settings)
    # The second process looked before the first created it.
    with mock.patch.object(c, "get_experiment_by_name", side_effect=[None, c.get_experiment_by_name("cityml")]):
        assert experiment_id(c, settings) == first


def test_a_versions_metrics_params_and_tags_are_on_its_run_and_its_metrics_on_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logged in two batches around the model (MLflow links metrics logged before it by reading each one's history
    back: one request per metric, 1,000 for a fleet model of 1,000 cities)."""
    import mlflow

    from cityml.modeling import LabelScale
    from training.registry import experiment_id, log_version

    settings = Settings(home=tmp_path / "var")
    c = client(settings)
    frame = pd.DataFrame({"distance_km": np.linspace(0.5, 20, 120)}).assign(duration_s=lambda f: f.distance_km * 120)
    booster = lgb.train({"verbosity": -1}, lgb.Dataset(frame[["distance_km"]], frame["duration_s"]), 5)
    metrics = {"mae": 1.5, "baseline_mae": 2.0, "city_mae_a": 3.0, "broken": float("nan")}
    tags = {"city": "alpha", "train_rows": 120}
    experiment = experiment_id(c, settings)
    read_back: list[str] = []
    real = mlflow.MlflowClient.get_metric_history

    def history(self: mlflow.MlflowClient, run_id: str, key: str) -> list[Any]:
        read_back.append(key)
        return real(self, run_id, key)

    monkeypatch.setattr(mlflow.MlflowClient, "get_metric_history", history)
    members = [(booster, LabelScale())]
    log_version(c, experiment, "eta-alpha", members, frame, ["distance_km"], metrics, tags, {}, {"p": 1})
    mv = c.get_model_version("eta-alpha", "1")
    run = c.get_run(mv.run_id)  # type: ignore[arg-type]
    assert run.data.metrics == {"mae": 1.5, "baseline_mae": 2.0, "city_mae_a": 3.0}
    assert run.data.params == {"p": "1", "features": "distance_km"}
    assert {k: run.data.tags[k] for k in tags} == {"city": "alpha", "train_rows": "120"}
    (model,) = c.search_logged_models(experiment_ids=[experiment], filter_string=f"source_run_id = '{mv.run_id}'")
    assert {m.key: m.value for m in model.metrics or []} == run.data.metrics
    assert read_back == []


@pytest.mark.parametrize("data", ["../model.lgb", "/etc/passwd", "a/../../model.lgb", "..\\model.lgb", "", None])
def test_a_booster_file_outside_the_model_is_refused_before_anything_is_fetched(tmp_path: Path, data: object) -> None:
    """From a remote store only MLmodel is fetched before the file it names: that name must stay inside the model
    folder, whatever the registry holds."""
    import yaml

    from cityml.registry import _booster_data, _read_mlmodel

    flavor = {"model_class": "lightgbm.basic.Booster", "data": data}
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {"lightgbm": flavor}}))
    with pytest.raises(UnsafeModelError, match="is not inside the model"):
        _booster_data(_read_mlmodel(tmp_path, "eta-x v1"), "eta-x v1")
    flavor["data"] = "sub/model.lgb"
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {"lightgbm": flavor}}))
    assert _booster_data(_read_mlmodel(tmp_path, "eta-x v1"), "eta-x v1") == "sub/model.lgb"
