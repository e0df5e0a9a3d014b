"""What a person sees in the MLflow UI, checked in a real temp store: the experiment's kind and description, each job
run's note (its summary) and per-layer table (a ``log_table`` table), the sweep run's note (the comparison table)."""

from __future__ import annotations

import json

import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from gflops_track import profile
from gflops_track.compare.report import finish_sweep, sweep_note
from gflops_track.counting.layer_info import layers_to_columns
from gflops_track.render.summary import summary_text
from gflops_track.tracking.records import NOTE_TAG, cost_record, summary_note, write_to_mlflow
from gflops_track.tracking.store import (
    EXPERIMENT_KIND_TAG,
    MODEL_DEVELOPMENT,
    connect,
    ensure_experiment,
    experiment_description,
)


def test_experiment_is_marked_for_model_development_and_says_how_to_compare(store_uri: str) -> None:
    client = connect(store_uri)
    created = client.get_experiment(ensure_experiment(client, "fresh"))
    assert created.tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT == "custom_model_development"
    description = created.tags[NOTE_TAG]
    assert description == experiment_description()
    for key in ("hardware", "variant", "cost/gflops", "latency/median_ms", "speed/achieved_gflop_per_s", "Group by",
                "Charts"):  # fmt: skip
        assert key in description
    older = client.create_experiment("made-by-an-older-version")  # no tags: marked when the tool first writes to it
    assert ensure_experiment(client, "made-by-an-older-version") == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
    chosen = client.create_experiment("user-set", tags={EXPERIMENT_KIND_TAG: "genai_development", NOTE_TAG: "mine"})
    ensure_experiment(client, "user-set")
    kept = client.get_experiment(chosen).tags
    assert kept[EXPERIMENT_KIND_TAG] == "genai_development" and kept[NOTE_TAG] == "mine"  # what the user set stays


def test_job_run_note_is_its_summary_and_layers_json_is_an_mlflow_table(store_uri: str) -> None:
    """Linear(8 -> 4), batch 2: MACs = 2 * 8 * 4 = 64, the layer table's one row says the same."""
    client = connect(store_uri)
    experiment_id = ensure_experiment(client, "unit")
    run_id = client.create_run(experiment_id, run_name="linear").info.run_id
    result = profile(torch.nn.Linear(8, 4), torch.randn(2, 8), device="cpu", timing=False)
    assert result.macs == 2 * 8 * 4
    write_to_mlflow(client, run_id, cost_record(result))
    tags = MlflowClient(store_uri).get_run(run_id).data.tags
    assert tags[NOTE_TAG] == f"```\n{summary_text(result).rstrip()}\n```"  # a fenced block keeps the columns aligned
    assert json.loads(tags["mlflow.loggedArtifacts"]) == [{"path": "layers.json", "type": "table"}]
    table = client.load_table(experiment_id, "layers.json", run_ids=[run_id])  # MLflow's own reader of log_table
    expected = layers_to_columns(result.layers)
    assert list(table.columns) == list(expected)
    assert table["macs"].sum() == 64
    for column, values in expected.items():
        assert list(table[column]) == values
    assert {a.path for a in client.list_artifacts(run_id)} >= {"layers.csv", "layers.json", "summary.txt"}


def test_summary_note_is_cut_to_mlflow_tag_limit() -> None:
    note = summary_note("x" * 20_000)
    assert len(note) <= MAX_TAG_VAL_LENGTH and note.startswith("```\n") and note.endswith("\n```")
    assert "summary.txt" in note


def test_sweep_run_note_holds_the_comparison_table(store_uri: str) -> None:
    """Two jobs, Linear(8 -> 4) and Linear(8 -> 16), batch 2: GFLOPs 2 * MACs / 1e9 = 1.28e-7 and 5.12e-7 (the
    bias adds 2 * 4 and 2 * 16 FLOPs)."""
    client = connect(store_uri)
    experiment_id = ensure_experiment(client, "sweeps")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    for out in (4, 16):
        child = client.create_run(experiment_id, run_name=f"linear-{out}", tags={"mlflow.parentRunId": parent})
        result = profile(torch.nn.Linear(8, out), torch.randn(2, 8), device="cpu", timing=False)
        assert result.macs == 2 * 8 * out
        write_to_mlflow(client, child.info.run_id, cost_record(result))
        client.set_terminated(child.info.run_id)
    assert finish_sweep(client, parent, store_uri) == "FINISHED"
    note = client.get_run(parent).data.tags[NOTE_TAG]
    assert note.startswith("Sweep of 2 job(s): 2 FINISHED")
    lines = note.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("| "))
    assert lines[header + 1].startswith("|---")  # a Markdown table: the UI renders it as one
    assert sum("linear-4" in line for line in lines) == 1 and sum("linear-16" in line for line in lines) == 1


def test_sweep_note_drops_whole_rows_to_fit_and_says_so() -> None:
    rows = [f"| variant-{index} | {'9' * 80} |" for index in range(200)]
    note = sweep_note("Sweep of 200 job(s).", "\n".join(["| variant | x |", "|---|---|", *rows]) + "\n")
    assert len(note) <= MAX_TAG_VAL_LENGTH
    shown = [line for line in note.splitlines() if line.startswith("| variant-")]
    assert shown == rows[: len(shown)] and note.endswith(f"{200 - len(shown)} more row(s) in comparison.csv.")
