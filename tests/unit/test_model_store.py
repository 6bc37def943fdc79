"""Which model answers for a city: its own champion, else the fleet model, but only for cities it learned."""

from pathlib import Path

from cityml.modeling import LabelScale
from cityml.registry import LoadedModel
from cityml.settings import Settings
from serving.model_store import ModelStore, Served


def _served(name: str, city: str, scale: LabelScale) -> Served:
    model = LoadedModel(name=name, version="1", booster=None, tags={}, run_id=None, scale=scale)  # type: ignore[arg-type]
    return Served(city=city, target="price", model=model)


def test_the_fleet_model_stands_in_only_for_cities_it_has_a_rate_for(tmp_path: Path) -> None:
    store = ModelStore(Settings(home=tmp_path))
    fleet = _served("price-global", "global", LabelScale("per_km_city", {"lisbon": 1.2, "jakarta": 5000.0}))
    own = _served("price-nairobi", "nairobi", LabelScale("per_km"))
    store._models = {("price", "global"): fleet, ("price", "nairobi"): own}

    assert store.get("price", "nairobi") == (own, None)
    served, why = store.get("price", "lisbon")
    assert served is fleet and why == "price-lisbon has no champion"
    # nyc was never in the fleet model's training: no rate to turn its output into dollars.
    assert store.get("price", "nyc") == (None, None)


def test_a_fleet_model_from_before_label_scales_still_stands_in_for_every_city(tmp_path: Path) -> None:
    store = ModelStore(Settings(home=tmp_path))
    store._models = {("eta", "global"): _served("eta-global", "global", LabelScale())}
    assert store.get("eta", "anywhere")[0] is store._models[("eta", "global")]


def test_one_rule_chooses_the_model_that_serves_a_city() -> None:
    from cityml.registry import choose_serving

    learned = {"alpha"}.__contains__
    assert choose_serving("eta", "alpha", "own", "fleet", lambda _: True) == ("own", None)
    assert choose_serving("eta", "alpha", None, "fleet", lambda _: learned("alpha")) == (
        "fleet",
        "eta-alpha has no champion",
    )
    # A fleet model that never learned the city has no rate to answer in its units.
    assert choose_serving("price", "beta", None, "fleet", lambda _: learned("beta")) == (None, None)
    assert choose_serving("price", "beta", None, None, lambda _: True) == (None, None)
