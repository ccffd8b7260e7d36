"""The scientist's objects in a notebook: one-line reprs, escaped HTML tables, the history as
a DataFrame, the sample grid's figure, and the per-round callback, all without a datasite.

Hospital clients are `None` where a federation needs some: a repr that touched a client
(a network call) would fail on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from scientist.__main__ import print_round, round_line
from scientist.checkpoint import Checkpoint
from scientist.config import StudyConfig
from scientist.federation import Federation
from scientist.pool import HospitalPool
from scientist.result import StudyResult
from scientist.samples import SampleGrid, sample_grid
from scientist.study import Study, complete_call, initial_weights
from synthetic.pathology import CLASS_NAMES

SCRIPT = "<script>alert(1)</script>"
EDGES = [0.0, 0.25, 0.5, 0.75, 1.0]


def _reply(
    hospital: str, weights: dict[str, np.ndarray], *, evaluate: bool, train: bool, spent: float
) -> dict[str, Any]:
    """What a hospital's study function returns for one call (see `Study._call_one`)."""
    reply: dict[str, Any] = {"hospital": hospital, "epsilon_study": spent, "epsilon_total": spent}
    if evaluate:
        counts = np.array([[40.0, 30.0, 20.0, 10.0], [5.0, 10.0, 15.0, 20.0]])
        reply["evaluation"] = {"counts": counts, "edges": EDGES, "loss_sum": 80.0, "noise_std": 2.0}
    if train:
        reply["train"] = {"weights": {k: v + 0.01 for k, v in weights.items()}, "n": 1000}
    return reply


def _run_offline(
    study: Study, on_round: Any = None
) -> tuple[Checkpoint, list[tuple[dict[str, Any], int]]]:
    """`Study.run`'s loop body for a 2-round study (evaluated at rounds 0 and 2), with the
    hospitals' replies written out instead of fetched. Returns the final state and, per
    call, the entry the callback saw and the checkpoint's next round on disk at that time."""
    state = Checkpoint(1, initial_weights(study.config))
    seen: list[tuple[dict[str, Any], int]] = []

    def record(entry: dict[str, Any]) -> None:
        saved = Checkpoint.load(study.folder)
        assert saved is not None
        seen.append((dict(entry), saved.next_round))
        if on_round is not None:
            on_round(entry)

    plan = [(True, True, 0.4), (False, True, 0.8), (True, False, 0.8)]  # calls 1, 2, 3
    for evaluate, train, spent in plan:
        replies = {
            h: _reply(h, state.weights, evaluate=evaluate, train=train, spent=spent)
            for h in study.requests
        }
        study._absorb(state, replies)
        complete_call(state, study.folder, record)
    return state, seen


@pytest.fixture
def study(tmp_path: Path) -> Study:
    config = StudyConfig(task="ehr", model="ehr_logistic", rounds=2, eval_every=2)
    requests = {"hospital-a": "req-a", "hospital-b": "req-b"}
    folder = tmp_path / "ehr-0001"
    folder.mkdir()
    return Study(HospitalPool({}, {}, tmp_path), "ehr-0001", config, requests, folder)


@pytest.fixture
def result(study: Study) -> StudyResult:
    state, _ = _run_offline(study)
    excluded = {SCRIPT: f"denied: {SCRIPT}"}
    return StudyResult(
        study.id,
        study.config.to_dict(),
        state.weights,
        state.history,
        list(study.requests),
        excluded,
    )


def test_federation_repr_is_one_line_with_names_count_and_workdir(tmp_path: Path) -> None:
    names = ["hospital-a", "hospital-b", "evil\nline"]
    fed = Federation(dict.fromkeys(names), {n: f"{n}@example.org" for n in names}, tmp_path)
    text = repr(fed)
    assert "\n" not in text
    assert text.startswith("Federation(3 hospitals: hospital-a, hospital-b, 'evil\\nline';")
    assert repr(str(tmp_path)) in text
    empty = Federation({}, {}, tmp_path / "studies")
    assert repr(empty) == f"Federation(0 hospitals: ; workdir {str(tmp_path / 'studies')!r})"


def test_federation_repr_shortens_a_long_list_of_hospitals(tmp_path: Path) -> None:
    names = [f"hospital-{i}" for i in range(8)]
    text = repr(Federation(dict.fromkeys(names), {}, tmp_path))
    assert (
        "8 hospitals: hospital-0, hospital-1, hospital-2, hospital-3, hospital-4, ... (+3)" in text
    )


def test_federation_html_is_a_table_that_escapes_hospital_names(tmp_path: Path) -> None:
    fed = Federation({SCRIPT: None}, {SCRIPT: "scientist@example.org"}, tmp_path)
    html = fed._repr_html_()
    assert html.startswith("<table")
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "scientist@example.org" in html and "federation of 1 hospitals" in html


def test_study_repr_keeps_its_style_and_names_the_hospitals(study: Study) -> None:
    text = repr(study)
    assert text == "Study('ehr-0001', ehr_logistic on ehr, 2 hospitals: hospital-a, hospital-b)"


def test_study_html_escapes_hospital_names(study: Study) -> None:
    study.requests[SCRIPT] = "req-evil"
    html = study._repr_html_()
    assert html.startswith("<table") and "<script" not in html
    assert "&lt;script&gt;" in html and "ehr_logistic on ehr" in html and "req-evil" in html
    assert "\n" not in repr(study) and "3 hospitals" in repr(study)


def test_result_repr_is_one_line_with_the_final_metrics(result: StudyResult) -> None:
    text = repr(result)
    assert "\n" not in text
    assert text.startswith("StudyResult('ehr-0001', ehr_logistic on ehr, 2 hospitals, 2/2 rounds:")
    final = result.metrics
    assert f"auroc {final['auroc']:.3f}, auprc {final['auprc']:.3f}, f1 {final['f1']:.3f}" in text
    assert text.endswith("epsilon 0.800)")


def test_result_html_has_the_history_and_escapes_hospital_text(result: StudyResult) -> None:
    html = result._repr_html_()
    assert html.startswith("<table") and html.count("<table") == 2
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_history_is_a_dataframe_with_a_row_per_round(result: StudyResult) -> None:
    history = result.history
    assert isinstance(history, pd.DataFrame)
    assert len(history) == len(result.rounds) == 3
    assert list(history.columns) == [
        "round",
        "n",
        "loss",
        "auroc",
        "auprc",
        "accuracy",
        "precision",
        "recall",
        "f1",
        *(
            f"{k}_{end}"
            for k in ("auroc", "auprc", "accuracy", "precision", "recall", "f1")
            for end in ("low", "high")
        ),
        "count_noise_std",
        "epsilon",
    ]
    assert history["round"].tolist() == [0, 1, 2]
    assert history["n"].isna().tolist() == [True, False, False]
    assert history["n"].iloc[1] == 2000  # two hospitals' 1000 examples each
    assert history["auroc"].notna().tolist() == [True, False, True]  # evaluated at 0 and 2
    epsilon = history["epsilon"]  # spent so far; round 0 trains nothing
    assert np.isnan(epsilon.iloc[0]) and epsilon.iloc[1:].tolist() == [0.4, 0.8]
    assert history["loss"].iloc[2] == pytest.approx(result.rounds[2]["loss"])


def test_history_of_a_pathmnist_study_has_its_metrics() -> None:
    config = StudyConfig(task="pathmnist", rounds=1).to_dict()
    rounds = [{"round": 0, "metrics": {"accuracy": 0.5, "per_class_recall": [0.5] * 9}}]
    history = StudyResult("pathmnist-0001", config, {}, rounds, ["hospital-a"]).history
    assert list(history.columns)[3:6] == ["accuracy", "macro_f1", "auroc"]
    assert history["accuracy"].tolist() == [0.5]
    empty = StudyResult("pathmnist-0002", config, {}, [], []).history
    assert empty.empty and list(empty.columns) == list(history.columns)


def test_save_still_writes_the_raw_rounds(result: StudyResult, tmp_path: Path) -> None:
    out = result.save(tmp_path / "report")
    summary = json.loads((out / "history.json").read_text())
    assert summary["history"] == json.loads(json.dumps(result.rounds, default=float))
    assert summary["metrics"] == json.loads(json.dumps(result.metrics, default=float))
    assert (out / "curves.png").stat().st_size > 0


def test_on_round_sees_each_completed_round_after_its_checkpoint(study: Study) -> None:
    state, seen = _run_offline(study)
    # Call r completes round r - 1, and the checkpoint on disk already points at call r + 1.
    assert [entry["round"] for entry, _ in seen] == [0, 1, 2]
    assert [next_round for _, next_round in seen] == [2, 3, 4]
    assert [entry for entry, _ in seen] == state.history
    assert "metrics" in seen[0][0] and "n" in seen[1][0] and "metrics" in seen[2][0]


def test_a_callback_that_raises_keeps_the_round(study: Study) -> None:
    def stop(entry: dict[str, Any]) -> None:
        if entry["round"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run_offline(study, stop)
    saved = Checkpoint.load(study.folder)
    assert saved is not None and saved.next_round == 3
    assert [e["round"] for e in saved.history] == [0, 1, 2]  # round 2 trained in call 2


def test_complete_call_without_a_callback_returns_the_round(study: Study) -> None:
    state = Checkpoint(1, initial_weights(study.config), history=[{"round": 0, "loss": 1.0}])
    assert complete_call(state, study.folder, None) == {"round": 0, "loss": 1.0}
    saved = Checkpoint.load(study.folder)
    assert saved is not None and saved.next_round == 2


def test_print_round_prints_the_round_line(
    result: StudyResult, capsys: pytest.CaptureFixture[str]
) -> None:
    for entry in result.rounds:
        print_round(entry)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [round_line(entry) for entry in result.rounds]


def test_sample_grid_returns_its_figure_and_writes_the_png(tmp_path: Path) -> None:
    import matplotlib.image

    rng = np.random.default_rng(0)
    labels = np.arange(2 * len(CLASS_NAMES)) % len(CLASS_NAMES)
    mocks = {
        h: (rng.integers(0, 256, (labels.size, 28, 28, 3), dtype=np.uint8), labels)
        for h in ("hospital-a", "hospital-b")
    }
    grid = sample_grid(mocks, tmp_path / "reports" / "samples.png", per_class=2)
    assert isinstance(grid, SampleGrid) and isinstance(grid.figure, Figure)
    assert grid.path == tmp_path / "reports" / "samples.png" and grid.path.exists()
    assert len(grid.figure.axes) == len(CLASS_NAMES) * 2 * 2
    picture = matplotlib.image.imread(grid.path)
    assert picture.shape[0] > 300 and picture[..., :3].std() > 0.05
    assert grid._repr_png_().startswith(b"\x89PNG")
    assert repr(grid) == f"SampleGrid({str(grid.path)!r})"
