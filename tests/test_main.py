"""The command as users run it: the seed sweep, bad input, failing jobs, non-image models, runs inside `mlflow run`.

Every test logs to a real MLflow SQLite store in a temp dir and reads the runs back with MlflowClient.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli
from test_residual_block import CONV_MACS, CONV_PARAMS, NORM_PARAMS, expected_seed_flops

pytestmark = pytest.mark.slow
QUICK = ["timing.warmup=1", "timing.min_repeats=3", "timing.max_time_s=0.5", "peak.measure=false"]


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []


def test_seed_sweep_exact_command(tmp_path: Path) -> None:
    """`python -m gflops_track -m norm_fn=group,batch,instance` into the default store ./mlflow.db."""
    # a matplotlib that has no font cache yet, as on a user's first run: it builds one while the report is drawn
    done = run_cli(["-m", "norm_fn=group,batch,instance"], cwd=tmp_path, MPLCONFIGDIR=str(tmp_path / "matplotlib"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "matplotlib").glob("fontlist*.json"))
    assert "fontManager" not in done.stdout + done.stderr  # matplotlib's INFO line, which Hydra printed as "[HYDRA]"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = all_runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_overrides"] == "norm_fn=group,batch,instance"
    assert parent.data.metrics["sweep/jobs"] == 3 and parent.data.metrics["sweep/failed_jobs"] == 0
    assert parent.data.tags["mlflow.source.name"] == "python -m gflops_track"  # the UI's Source column, not "-"
    assert parent.data.tags["mlflow.user"] and "cost/macs" not in parent.data.metrics  # job figures stay on the jobs
    by_norm = {run.data.params["model.norm_fn"]: run for run in children}
    assert set(by_norm) == {"group", "batch", "instance"}
    client = MlflowClient(uri)
    for norm, run in by_norm.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"{norm}-residual_block-b2-cpu-fp32"  # the variant leads: the UI cuts names
        assert run.data.tags["mlflow.source.name"] == "python -m gflops_track" and "sweep/jobs" not in run.data.metrics
        params = run.data.params
        assert params["model.planes"] == "384" and params["batch.size"] == "2" and params["input.shape"] == "null"
        assert params["model._target_"] == "gflops_track.models.ResidualBlock"
        metrics = run.data.metrics
        assert metrics["cost/params"] == CONV_PARAMS + NORM_PARAMS[norm]
        assert metrics["cost/macs"] == 2 * CONV_MACS == 5_435_817_984
        assert metrics["cost/flops"] == sum(expected_seed_flops(norm).values())
        for category, flops in expected_seed_flops(norm).items():
            assert metrics[f"cost/flops_{category}"] == flops
        assert metrics["xcheck/torch_flop_counter_flops"] == 2 * 2 * CONV_MACS
        timed, met = metrics["timing/timed_iterations"], bool(metrics["timing/precision_target_met"])
        assert metrics["latency/median_ms"] > 0 and timed >= 1
        # What the tool promises on any machine: the target met with >= min_repeats samples, or said why not (timed
        # under load, or the time bound cut timing short) - never a silent short run.
        assert (met and timed >= 30) or metrics["timing/suspect"] == 1 or metrics["timing/time_bound_hit"] == 1
        if "latency/ci95_low_ms" in metrics:
            assert metrics["latency/ci95_low_ms"] <= metrics["latency/median_ms"] <= metrics["latency/ci95_high_ms"]
            assert not met or metrics["latency/precision"] <= 0.01
        else:  # no CI below 8 samples: never "target met"
            assert timed < 8 and not met
        assert metrics["peak/measured_gflop_per_s"] > 0 and metrics["speed/utilization_vs_measured_peak"] > 0
        achieved = metrics["cost/flops"] / metrics["latency/median_ms"] / 1e6  # FLOPs / ms / 1e6 = GFLOP/s
        assert metrics["speed/achieved_gflop_per_s"] == pytest.approx(achieved)
        assert run.data.tags["hardware"].startswith("cpu:") and run.data.tags["torch_version"] == torch.__version__
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {
            "config.yaml",
            "layers.csv",
            "layers.json",
            "summary.txt",
            "latency_samples.json",
        } <= artifacts
        assert "roofline.png" not in artifacts  # a sweep's jobs share one roofline: the report's
        layers_csv = Path(client.download_artifacts(run.info.run_id, "layers.csv", str(tmp_path))).read_text()
        assert layers_csv.splitlines()[0].startswith("name,type,depth,output_shape,params")
        assert "self_ms" in layers_csv.splitlines()[0] and "bound_ms" in layers_csv.splitlines()[0]
        assert metrics["layers/layers_below_bound"] == 0 and metrics["layers/bound_ms"] > 0  # no layer beats its bound
        samples = json.loads(Path(client.download_artifacts(run.info.run_id, "latency_samples.json")).read_text())
        assert len(samples["latency_ms"]) == metrics["timing/timed_iterations"]
    assert "comparison.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "report/roofline.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "sweep" in done.stdout and "instance-residual_block-b2-cpu" in done.stdout
    assert "thop counts" in done.stdout  # the disagreement with thop is said, not hidden


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["norm_fn=foo"], "norm_fn='foo' is not allowed: choose one of batch, group, instance, none"),
        (["-m", "norm_fn=group,foo"], "norm_fn='foo' is not allowed: choose one of batch, group, instance, none"),
        (["batch.size=-1"], "batch.size=-1 is not allowed: it must be an integer >= 1"),
        (["-m", "batch.size=2,0"], "batch.size=0 is not allowed: it must be an integer >= 1"),
        (["model.planes=100"], "model.planes=100 is not allowed with norm_fn='group': it must be a multiple of 8"),
        (["batch.size=abc"], "batch.size: Value 'abc' of type 'str' could not be converted to Integer"),
        (["model=custom"], "model._target_=??? is not allowed: this key must be set"),
        (["tracking.run_name='{nope}'"], "tracking.run_name='{nope}' is not allowed: use only the fields"),
        (["batch.size={2}"], "'batch.size={2}' is not a valid override (no viable alternative at input '{2}')"),
        (["device=gpu"], "device='gpu' is not allowed: choose one of auto, cpu, cuda"),
        (["precision=fp8"], "precision='fp8' is not allowed: choose one of bf16, fp16, fp32, tf32"),
        (["timing.min_repeats=0"], "timing.min_repeats=0 is not allowed: it must be an integer >= 1"),
        (["mode=training"], "mode='training' is not allowed: choose one of inference, train"),
        (["-m", "mode=train", "train.optimizer=sgd,lion"], "train.optimizer='lion' is not allowed: choose one"),
        (["mode=train", "train.loss=mse"], "train.loss='mse' is not allowed: choose one of sum, cross_entropy"),
        (
            [
                "mode=train",
                "train.loss=cross_entropy",
                "model=custom",
                "model._target_=torch.nn.Linear",
                "+model.in_features=8",
                "+model.out_features=1",
                "input.shape=[8]",
            ],
            "mode=train: loss='cross_entropy' is not allowed for a model output of shape [2, 1]: it needs a class",
        ),
        (
            ["mode=train", "model=custom", "model._target_=torch.nn.ReLU", "input.shape=[8]"],
            "mode=train: model=ReLU is not allowed in a training step: it has no trainable parameters",
        ),
        (
            ["runtime.compile=fast"],
            "runtime.compile='fast' is not allowed: choose one of off, default, reduce-overhead",
        ),
    ],
)
def test_bad_input_is_one_clear_line_and_creates_no_run(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_creates_no_run(tmp_path: Path) -> None:
    done = run_cli(["device=cuda"], cwd=tmp_path)
    assert done.returncode == 2
    assert "device='cuda' is not allowed on this machine: it has no CUDA device" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_failing_job_is_marked_failed_and_sweep_goes_on(tmp_path: Path, store_uri: str) -> None:
    model = ["model=custom", "model._target_=fixture_models.FailsOnBatchSize", "+model.in_channels=3"]
    done = run_cli(
        ["-m", "batch.size=2,3,4", *model, "+model.fail_on=3", *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri
    )
    assert done.returncode == 1
    runs = {run.info.run_name: run for run in all_runs(store_uri)}
    failed = runs["b3-fails_on_batch_size-cpu-fp32"]
    assert failed.info.status == "FAILED"
    assert "planted failure for batch size 3" in failed.data.tags["error"]
    for batch in (2, 4):
        finished = runs[f"b{batch}-fails_on_batch_size-cpu-fp32"]
        assert finished.info.status == "FINISHED"
        assert finished.data.metrics["cost/macs"] == batch * 4 * 3 * 32 * 32  # N * C_out * C_in * H * W
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/failed_jobs"] == 1
    assert not (tmp_path / "mlflow.db").exists()  # MLFLOW_TRACKING_URI was honoured


def test_non_image_model_with_explicit_input_shape(tmp_path: Path, store_uri: str) -> None:
    args = ["model=custom", "model._target_=torch.nn.Linear", "+model.in_features=256", "+model.out_features=512"]
    done = run_cli(
        [*args, "input.shape=[128,256]", "batch.size=4", *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    rows = 4 * 128
    assert run.data.metrics["cost/macs"] == rows * 256 * 512
    assert run.data.metrics["cost/flops_bias"] == rows * 512
    assert run.data.metrics["cost/params"] == 256 * 512 + 512
    assert run.data.params["input.shape"] == "[128, 256]"
    assert run.info.run_name == "linear-b4-cpu-fp32"


def test_inside_mlflow_run_logs_into_that_run(tmp_path: Path, store_uri: str) -> None:
    """MLFLOW_RUN_ID set (as `mlflow run` does): a single job logs into it, a sweep nests under it."""
    client = MlflowClient(store_uri)
    outer = client.create_run(client.create_experiment("outer")).info.run_id
    single = run_cli(["norm_fn=none", *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri, MLFLOW_RUN_ID=outer)
    assert single.returncode == 0, single.stderr[-3000:]
    (run,) = all_runs(store_uri)
    assert run.info.run_id == outer and run.data.metrics["cost/macs"] == 2 * CONV_MACS
    sweep_outer = client.create_run(client.get_experiment_by_name("outer").experiment_id).info.run_id
    sweep = run_cli(
        ["-m", "norm_fn=none,batch", *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri, MLFLOW_RUN_ID=sweep_outer
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    nested = [r for r in all_runs(store_uri) if r.data.tags.get("mlflow.parentRunId") == sweep_outer]
    assert len(nested) == 2 and len(all_runs(store_uri)) == 4


SMALL_BLOCK = ["model.in_planes=32", "model.planes=32"]


def test_batch_size_sweep_logs_a_throughput_curve(tmp_path: Path, store_uri: str) -> None:
    done = run_cli(["-m", "batch.size=1,2,4", *SMALL_BLOCK, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = all_runs(store_uri)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    client = MlflowClient(store_uri)
    charts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/throughput_vs_batch_size.png" in charts
    children = sorted((r for r in runs if r is not parent), key=lambda r: int(r.data.params["batch.size"]))
    for run in children:  # throughput = batch / median latency
        batch = int(run.data.params["batch.size"])
        expected = batch / (run.data.metrics["latency/median_ms"] / 1e3)
        assert run.data.metrics["speed/throughput_samples_per_s"] == pytest.approx(expected)


def test_precision_and_thread_options_are_applied_and_logged(tmp_path: Path, store_uri: str) -> None:
    args = ["precision=bf16", "runtime.threads=1", "runtime.memory_format=channels_last", *SMALL_BLOCK, *QUICK]
    done = run_cli(args, cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    assert run.info.run_name == "residual_block-group-b2-cpu-bf16"
    params = run.data.params
    assert params["precision.dtype"] == "bf16" and params["precision.mode"] == "autocast"
    assert params["runtime.threads"] == "1" and params["effective.torch_num_threads"] == "1"
    assert params["effective.float32_matmul_precision"] == "highest"
    assert run.data.metrics["timing/cond_threads"] == 1
    assert run.data.tags["torch_threads"] == "1"  # threads have a tag of their own; the machine's label has none
    assert "x1" not in run.data.tags["hardware"] and run.data.tags["hardware"].startswith("cpu:")


def test_inference_and_train_sweep(tmp_path: Path, store_uri: str) -> None:
    """`-m mode=inference,train` on a 16-channel 8x8 batch-norm block, batch 2. Each 3x3 conv is
    M = N*C_out*H*W*C_in*9 = 2*16*8*8*16*9 = 294,912 MACs forward. The input needs no grad, so conv2's backward
    computes grad-input and grad-weight (2M) and conv1's grad-weight only (M): the step's dense MACs are
    2M + 3M = 5M; FlopCounterMode counts 2 FLOPs per MAC over forward + backward."""
    small = ["norm_fn=batch", "model.in_planes=16", "model.planes=16", "batch.height=8", "batch.width=8"]
    timing = ["timing.warmup=1", "timing.min_repeats=3", "timing.max_time_s=0.5", "counting.thop=false"]
    done = run_cli(
        ["-m", "mode=inference,train", "train.optimizer=adamw", *small, *timing], cwd=tmp_path,
        MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r.info.run_name: r for r in all_runs(store_uri) if "mlflow.parentRunId" in r.data.tags}
    assert set(runs) == {"inference-residual_block-batch-b2-cpu-fp32", "train-residual_block-batch-b2-cpu-fp32"}
    inference, train = (runs[f"{mode}-residual_block-batch-b2-cpu-fp32"] for mode in ("inference", "train"))
    m = 2 * 16 * 8 * 8 * 16 * 9
    assert inference.data.tags["mode"] == "inference" and "step/macs" not in inference.data.metrics
    assert "step/mfu" not in inference.data.metrics and inference.data.metrics["latency/median_ms"] > 0
    metrics, tags, params = train.data.metrics, train.data.tags, train.data.params
    assert params["mode"] == "train" and params["train.optimizer"] == "adamw" and params["train.loss"] == "sum"
    assert tags["mode"] == "train" and tags["train_optimizer"] == "adamw" and tags["train_loss"] == "sum"
    assert metrics["cost/macs"] == 2 * m  # the forward's count is still there
    assert metrics["step/macs"] == 5 * m == 1_474_560
    assert metrics["xcheck/step_torch_flop_counter_flops"] == 2 * 5 * m
    assert tags["step_torch_flop_counter_agrees"] == "true"
    phases = metrics["step/flops_forward"] + metrics["step/flops_backward"] + metrics["step/flops_optimizer"]
    assert phases == metrics["step/flops"]
    assert metrics["step/flops_optimizer"] > 0  # AdamW's moments, decay and update: counted, never 0
    assert "latency/median_ms" not in metrics  # no inference forward is timed in train mode
    step_ms = metrics["step/latency_median_ms"]
    assert step_ms > 0 and metrics["step/forward_ms"] > 0
    assert metrics["step/achieved_gflop_per_s"] == pytest.approx(metrics["step/flops"] / (step_ms / 1e3) / 1e9)
    # MFU on CPU: against the measured roof, and the tag names that peak
    roof = metrics["peak/measured_gflop_per_s"]
    assert metrics["step/mfu"] == pytest.approx(metrics["step/achieved_gflop_per_s"] / roof)
    assert metrics["step/mfu"] == metrics["step/mfu_vs_measured_peak"] and "step/mfu_vs_spec_peak" not in metrics
    assert tags["mfu_peak"].startswith("measured peak ")
    assert "MFU" in tags["mlflow.note.content"]
    client = MlflowClient(store_uri)
    step_layers = client.download_artifacts(train.info.run_id, "step_layers.csv", str(tmp_path))
    lines = Path(step_layers).read_text().splitlines()
    header = lines[0].split(",")
    column = {name: header.index(name) for name in ("forward_macs", "backward_macs")}
    rows = [line.split(",") for line in lines[1:]]
    assert sum(int(row[column["forward_macs"]]) for row in rows) == 2 * m
    assert sum(int(row[column["backward_macs"]]) for row in rows) == 3 * m
    assert "train step GFLOPs" in done.stdout and "MFU" in done.stdout  # the sweep's comparison shows the step
