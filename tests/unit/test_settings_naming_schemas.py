import pytest
from pydantic import ValidationError

from cityml.naming import champion_uri, feature_service_name, model_name
from cityml.settings import Settings
from serving.schemas import PredictRequest, TripRequest


def test_api_keys_from_comma_list_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYML_API_KEYS", "k1, k2")
    monkeypatch.setenv("CITYML_ADMIN_KEY", "boss")
    s = Settings()
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    public = s.public()
    assert public["api_keys"] == ["********", "********"] and public["admin_key"] == "********"
    assert "boss" not in str(public) and "k1" not in str(public)


def test_defaults_are_embedded_under_home(tmp_path: object) -> None:
    s = Settings(home=tmp_path)
    assert s.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert s.feast_yaml.name == "feature_store.yaml"
    assert Settings(home=tmp_path, online_store="redis").feast_yaml.name == "feature_store.redis.yaml"


def test_names() -> None:
    assert model_name("eta", "sao-paulo") == "eta-sao-paulo"
    assert champion_uri("price", "global") == "models:/price-global@champion"
    assert feature_service_name("eta") == "eta_v2"
    assert feature_service_name("eta", 1) == "eta_v1"
    assert model_name("demand", "lisbon") == "demand-lisbon"  # a model added in one DAG file (training.hourly)
    with pytest.raises(ValueError, match="target 'Tip!'"):
        model_name("Tip!", "lisbon")
    with pytest.raises(ValueError, match="unknown target 'tip'"):  # trip services are eta's and price's only
        feature_service_name("tip")


def test_trip_request_needs_a_place() -> None:
    TripRequest(city="a", pickup_zone="z1", dropoff_zone="z2", distance_km=3)
    TripRequest(city="a", pickup_lat=1, pickup_lon=1, dropoff_lat=2, dropoff_lon=2)
    with pytest.raises(ValidationError, match="all four"):
        TripRequest(city="a", pickup_lat=1, pickup_lon=1)
    with pytest.raises(ValidationError, match="pickup_zone and dropoff_zone"):
        TripRequest(city="a", distance_km=3)
    with pytest.raises(ValidationError, match="pickup_lat"):
        TripRequest(city="a", pickup_lat=91, pickup_lon=1, dropoff_lat=2, dropoff_lon=2)


def test_batch_size_limits() -> None:
    one = {"city": "a", "pickup_zone": "z1", "dropoff_zone": "z2", "distance_km": 1}
    PredictRequest(instances=[one])
    with pytest.raises(ValidationError):
        PredictRequest(instances=[])
    with pytest.raises(ValidationError):
        PredictRequest(instances=[one] * 1001)
