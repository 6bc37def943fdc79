"""Every DAG a data scientist commits must parse and follow the house rules (STYLE.md 2–4)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from cityml.settings import PROJECT_ROOT

DAGS_DIR = PROJECT_ROOT / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
EXPECTED = {"retrain_city_models", "retrain_demand", "materialize_features", "monitor_drift"}
HEAVY = {"mlflow", "feast", "lightgbm", "pandas", "training", "serving", "monitoring"}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}


def test_expected_dags_exist(dagbag: DagBag) -> None:
    assert set(dagbag.dag_ids) >= EXPECTED


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_file_name_is_dag_id_and_header_habits(dagbag: DagBag, path: Path) -> None:
    dag = dagbag.dags.get(path.stem)
    assert dag is not None, f"{path.name} must define the DAG {path.stem!r}"
    assert dag.tags, f"{dag.dag_id}: add tags"
    assert dag.doc_md and len(dag.doc_md) > 40, f"{dag.dag_id}: doc_md=__doc__ with a real docstring"
    assert dag.default_args.get("owner"), f"{dag.dag_id}: set an owner"
    for task in dag.tasks:
        assert task.retries >= 2, f"{dag.dag_id}.{task.task_id}: retries >= 2"
    assert dag.default_args.get("retries", 0) >= 2, f"{dag.dag_id}: default retries >= 2"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_at_parse_time(path: Path) -> None:
    """Heavy packages are imported inside task bodies, never at module top level."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in HEAVY, f"{path.name}: top-level import of {name}"
