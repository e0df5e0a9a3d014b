"""Hugging Face models by name from the command line (``model=hf``): GPT-2's exact count, Llama-2-7B counted without its
weights, config overrides, heads, local configs and names checked before any run.

transformers comes from the ``hf`` extra, which .ci/install-extras puts in .extras/hf; these tests run the command
with that folder on its path and torchvision absent (this environment's torchvision breaks ``import transformers``:
tests/torchvision_ops.py). Without transformers they are skipped. Every figure has its formula written out.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env, extra_path, run_cli

pytestmark = pytest.mark.slow
COUNT_ONLY = ["timing.enabled=false", "peak.measure=false"]


@pytest.fixture(scope="module")
def hf_path() -> list[str]:
    return [path for path in [extra_path("hf", "transformers")] if path]


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def gpt2_params(layers: int = 12, d: int = 768, vocab: int = 50_257, positions: int = 1024) -> int:
    """Token and position embeddings; per block two LayerNorms (2d each), c_attn (d x 3d + 3d), attention c_proj
    (d x d + d), c_fc (d x 4d + 4d), MLP c_proj (4d x d + d): 12d^2 + 13d; the final LayerNorm; the head is tied to
    the token embedding (no parameters of its own)."""
    return vocab * d + positions * d + layers * (12 * d * d + 13 * d) + 2 * d


def gpt2_macs(batch: int, seq: int, layers: int = 12, d: int = 768, vocab: int = 50_257, head: bool = True) -> int:
    """T = batch * seq tokens; per block QKV T*d*3d, output projection T*d*d, scores and weighted sum 2*batch*seq^2*d
    (every head, the full square: the causal mask skips no product), MLP 2*T*d*4d; the head T*d*vocab."""
    tokens = batch * seq
    block = tokens * d * 3 * d + tokens * d * d + 2 * batch * seq * seq * d + 2 * tokens * d * 4 * d
    return layers * block + (tokens * d * vocab if head else 0)


def test_gpt2_by_name_counts_exactly(tmp_path: Path, store_uri: str, hf_path: list[str]) -> None:
    """`model=hf model.name=gpt2` at batch 1, seq 128 (input_ids and an all-ones attention_mask): thop has no rule for
    GPT-2's Conv1D; its note says so, names three of the 48 and how many more, and thop.txt names every one."""
    done = run_cli(["model=hf", "model.name=gpt2", "batch.size=1", *COUNT_ONLY], cwd=tmp_path, pythonpath=hf_path,
                   MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.info.run_name == "gpt2-b1-cpu-fp32"
    assert metrics["cost/params"] == gpt2_params() == 124_439_808
    assert metrics["cost/macs"] == gpt2_macs(1, 128) == 16_114_089_984
    assert run.data.tags["model"] == "GPT2LMHeadModel" and run.data.tags["torch_flop_counter_agrees"] == "true"
    assert "thop has no rule for Conv1D and counts 0 for it" in done.stdout
    parts = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    conv1d_names = [f"transformer.h.{i}.{part}" for i in range(12) for part in parts]
    assert f"Conv1D ({', '.join(conv1d_names[:3])} (+45 more)): thop" in done.stdout
    thop_txt = Path(MlflowClient(store_uri).download_artifacts(run.info.run_id, "thop.txt", str(tmp_path))).read_text()
    assert f"Conv1D ({', '.join(conv1d_names)}): thop" in thop_txt
    assert "bias add" not in thop_txt


PEAK_RSS = (  # runs the command given as its arguments, then prints its peak resident set (its only child)
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}'); sys.exit(code)"
)


def test_llama_7b_is_counted_without_its_weights(tmp_path: Path, store_uri: str, hf_path: list[str]) -> None:
    """Llama-2-7B (transformers' default LlamaConfig) built on meta: 27 GB of fp32 weights never allocated; the
    command's peak resident memory stays under 3 GB. (model.init=meta: auto would do the same where the weights do
    not fit, and time the model where they do.)"""
    d, ff, layers, vocab, batch, seq = 4096, 11_008, 32, 32_000, 1, 128
    command = [sys.executable, "-m", "gflops_track", "model=hf", "model.name=llama", "model.init=meta", "batch.size=1"]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=cli_env(pythonpath=hf_path, MLFLOW_TRACKING_URI=store_uri, XDG_CACHE_HOME=str(tmp_path / ".cache")),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    peak_kib = int(re.search(r"peak_rss_kib=(\d+)", done.stdout).group(1))
    assert peak_kib < 3 * 2**20, f"peak RSS {peak_kib / 2**20:.2f} GiB"
    (run,) = all_runs(store_uri)
    metrics = run.data.metrics
    # embeddings and the untied head 2*vocab*d; per layer q, k, v, o 4d^2, gate/up/down 3*d*ff, two RMSNorms 2d; the
    # final RMSNorm d
    assert metrics["cost/params"] == 2 * vocab * d + layers * (4 * d * d + 3 * d * ff + 2 * d) + d == 6_738_415_616
    tokens = batch * seq
    block = 4 * tokens * d * d + 3 * tokens * d * ff + 2 * batch * seq * seq * d  # projections, MLP, scores and sum
    assert metrics["cost/macs"] == layers * block + tokens * d * vocab == 850_000_871_424
    assert run.info.status == "FINISHED" and run.data.tags["count_backend"] == "fake"
    assert not any(key.startswith(("latency/", "peak/")) for key in metrics)
    assert "timing skipped: model.init=meta built it without weights" in done.stdout


def test_config_overrides_and_heads(tmp_path: Path, store_uri: str, hf_path: list[str]) -> None:
    """`+model.config.n_layer=2`, swept over the causal-LM head and the bare model (no head: no vocabulary product;
    the same parameters, the head being tied)."""
    done = run_cli(
        ["-m", "model=hf", "model.name=gpt2", "+model.config.n_layer=2", "model.task=causal_lm,base", "batch.size=1",
         "batch.seq_len=32", *COUNT_ONLY],
        cwd=tmp_path, pythonpath=hf_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = {r.data.params["model.task"]: r for r in all_runs(store_uri) if "mlflow.parentRunId" in r.data.tags}
    assert jobs["causal_lm"].data.metrics["cost/macs"] == gpt2_macs(1, 32, layers=2)
    assert jobs["base"].data.metrics["cost/macs"] == gpt2_macs(1, 32, layers=2, head=False)
    assert {run.data.metrics["cost/params"] for run in jobs.values()} == {gpt2_params(layers=2)}
    assert {run.data.tags["model"] for run in jobs.values()} == {"GPT2LMHeadModel", "GPT2Model"}


def test_sequence_classification_of_a_model_without_a_padding_id(
    tmp_path: Path, store_uri: str, hf_path: list[str]
) -> None:
    """GPT-2 has no padding id, and its classification head refuses batches > 1 without one; the inputs' attention
    mask is all ones, so the build gives it the end-of-sequence id. One block, d=768, 2 labels: the block's MACs and
    the score head T*d*2 (on every token; the head then picks each row's last)."""
    done = run_cli(
        ["model=hf", "model.name=gpt2", "+model.config.n_layer=1", "model.task=sequence_classification",
         "+model.config.attn_implementation=eager", "batch.size=2", "batch.seq_len=16", *COUNT_ONLY],
        cwd=tmp_path, pythonpath=hf_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    # attn_implementation is a key the config takes (and keeps as _attn_implementation): not refused as unknown
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "GPT2ForSequenceClassification"
    assert run.data.metrics["cost/macs"] == gpt2_macs(2, 16, layers=1, head=False) + 2 * 16 * 768 * 2


def test_a_local_config_trains_on_meta(tmp_path: Path, store_uri: str, hf_path: list[str]) -> None:
    """A folder holding a config.json (one GPT-2 block), its training step counted without weights: forward M,
    backward 2M (both operands of every product need a gradient, the embeddings being trained)."""
    folder = tmp_path / "tiny-gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 64, "n_head": 4}))
    done = run_cli(
        ["model=hf", f"model.name={folder}", "model.init=meta", "mode=train", "batch.size=2", "batch.seq_len=16"],
        cwd=tmp_path, pythonpath=hf_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    forward = gpt2_macs(2, 16, layers=1, d=64)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny_gpt2-b2-cpu-fp32-train"
    assert run.data.metrics["cost/macs"] == forward and run.data.metrics["step/macs"] == 3 * forward
    assert "step/latency_median_ms" not in run.data.metrics


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.name=gtp2"], "model.name='gtp2' is not allowed: it is neither a transformers model type (did you "
                              "mean gpt2?) nor a local config.json or folder holding one"),
        (["model.name=t5", "model.task=causal_lm"], "model.task='causal_lm' is not allowed for model.name='t5': "
                                                   "choose one of seq2seq_lm, base,"),
        (["model.name=gpt2", "model.task=chat"], "model.task='chat' is not allowed: choose one of causal_lm,"),
        ([], "model.name=??? is not allowed: this key must be set"),
        # transformers keeps an unknown key as a new attribute, and the full-size model would be profiled
        (["model.name=gpt2", "+model.config.n_layerz=2"], "model.config.n_layerz=2 is not allowed: GPT2Config has no "
                                                         "key 'n_layerz' (did you mean n_layer"),
        # past the learned position table: an IndexError inside the forward, after the run existed
        (["model.name=gpt2", "+model.config.n_layer=1", "batch.seq_len=1025"],
         "batch.seq_len=1025 is not allowed for model.name='gpt2': its learned position table (transformer.wpe) "
         "holds 1,024 positions; use batch.seq_len<=1024"),
        (["model.name=bart", "+model.config.encoder_layers=1", "batch.seq_len=1025"],  # 1,026 rows, offset 2
         "batch.seq_len=1025 is not allowed for model.name='bart': its learned position table "
         "(model.decoder.embed_positions) holds 1,024 positions"),
        # ViT is built for one image size: another failed inside the forward, after the run existed
        (["model.name=vit", "model.task=image_classification", "+model.config.num_hidden_layers=1", "batch.height=64",
          "batch.width=48"],
         "batch.height=64, batch.width=48 is not allowed for model.name='vit': it refuses a 64x48 image (ValueError: "
         "Input image size (64*48) doesn't match model (224*224)); build it for that size with "
         "+model.config.image_size=[64,48] (over a sweep of sizes: "
         "'+model.config.image_size=[${batch.height},${batch.width}]')"),
        # Swin's forward changes its window to the last image it saw: checked on copies, its own size first
        (["model.name=swin", "model.task=image_classification", "+model.config.depths=[1,1,1,1]", "batch.size=1",
          "batch.height=64", "batch.width=64"],
         "batch.height=64, batch.width=64 is not allowed for model.name='swin': it refuses a 64x64 image "
         "(RuntimeError: Attempting to broadcast a dimension of length 49"),
        # a text model has no image: the size was ignored, and runs were named by it
        (["model.name=gpt2", "+model.config.n_layer=1", "batch.height=64"],
         "batch.height=64 is not allowed for model.name='gpt2': it is fed input_ids of [128], attention_mask of [128] "
         "per sample, no image, so the size would be ignored"),
        (["model.name=gpt2", "+model.config.n_layer=two"], "model.config: StrictDataclassFieldValidationError: "
                                                          "Validation error for field 'n_layer': TypeError: Field "
                                                          "'n_layer' expected int, got str (value: 'two')"),
    ],
)  # fmt: skip
def test_names_and_heads_are_checked_before_any_run(
    tmp_path: Path, hf_path: list[str], args: list[str], message: str
) -> None:
    done = run_cli(["model=hf", *args], cwd=tmp_path, pythonpath=hf_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()


def test_an_image_model_is_not_held_to_seq_len(tmp_path: Path, store_uri: str, hf_path: list[str]) -> None:
    """CLIP's image classifier is fed pixel_values: its vision tower's patch-position table (50 rows) is not
    batch.seq_len's (128 by default), which once refused it before any run."""
    done = run_cli(
        ["model=hf", "model.name=clip", "model.task=image_classification", "batch.size=1", *COUNT_ONLY,
         "+model.config.vision_config.num_hidden_layers=1", "+model.config.text_config.num_hidden_layers=1"],
        cwd=tmp_path, pythonpath=hf_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    assert run.info.status == "FINISHED" and run.data.metrics["cost/macs"] > 0


def test_vit_built_for_another_image_size_counts_exactly(tmp_path: Path, store_uri: str, hf_path: list[str]) -> None:
    """The override preflight names for a 64 x 48 image, on a one-layer ViT (d=64, 4 heads, MLP 128, 16 x 16 patches,
    2 labels): N = (64/16)(48/16) = 12 patches, T = 13 tokens with [CLS]. MACs: patch embedding N*d*3*16*16; the layer
    T*d*3d (QKV) + T*d*d (output) + 2*T*T*d (scores, weighted sum) + 2*T*d*128 (MLP); the head on [CLS] d*2.
    Parameters: patch conv 3*16*16*d + d, [CLS] d, positions T*d, the layer 4(d*d + d) + 2*d*128 + 128 + d and two
    LayerNorms 4d, the final LayerNorm 2d, the head 2d + 2."""
    d, mlp, patches, tokens = 64, 128, (64 // 16) * (48 // 16), (64 // 16) * (48 // 16) + 1
    macs = patches * d * 3 * 16 * 16 + tokens * d * 3 * d + tokens * d * d + 2 * tokens * tokens * d
    macs += 2 * tokens * d * mlp + d * 2
    params = 3 * 16 * 16 * d + d + d + tokens * d + 4 * (d * d + d) + 2 * d * mlp + mlp + d + 4 * d + 2 * d + 2 * d + 2
    assert (macs, params) == (1_037_568, 83_842)
    config = [
        f"+model.config.{key}={value}"
        for key, value in (
            ("num_hidden_layers", 1),
            ("hidden_size", d),
            ("num_attention_heads", 4),
            ("intermediate_size", mlp),
        )
    ]
    done = run_cli(
        ["model=hf", "model.name=vit", "model.task=image_classification", "batch.size=1", "batch.height=64",
         "batch.width=48", "+model.config.image_size=[64,48]", *config, *COUNT_ONLY],
        cwd=tmp_path, pythonpath=hf_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    assert run.data.metrics["cost/macs"] == macs and run.data.metrics["cost/params"] == params
    assert "[1, 3, 64, 48]" in run.data.tags["mlflow.note.content"]


def test_what_the_checks_cannot_judge_is_left_to_the_job(tmp_path: Path, store_uri: str, hf_path: list[str]) -> None:
    """An image model that has no input embedding (HF ResNet's get_input_embeddings raises NotImplementedError) fed
    floats by input.shape runs; a model fed what gflops-track cannot make (Whisper's input_features) given a
    batch.height fails as its own FAILED run. Both crashed preflight with a traceback (found by a review)."""
    where = {"cwd": tmp_path, "pythonpath": hf_path, "MLFLOW_TRACKING_URI": store_uri}
    resnet = ["model.name=resnet", "model.task=image_classification", "input.shape=[3,32,32]",
              "+model.config.depths=[1,1,1,1]", "+model.config.hidden_sizes=[8,8,8,8]",
              "+model.config.embedding_size=8"]  # fmt: skip
    done = run_cli(["model=hf", *resnet, *COUNT_ONLY], **where)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    done = run_cli(["model=hf", "model.name=whisper", "model.task=base", "+model.config.encoder_layers=1",
                    "+model.config.decoder_layers=1", "batch.height=64", *COUNT_ONLY], **where)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "ValueError: WhisperModel is fed 'input_features', which gflops-track cannot make" in done.stderr
    assert sorted(run.info.status for run in all_runs(store_uri)) == ["FAILED", "FINISHED"]
