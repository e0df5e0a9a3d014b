"""torchvision and timm models by name from the command line (``model=torchvision``, ``model=timm``), each fed its own
image size, and a torchvision that does not import reported by its own error.

torchvision and timm come from the ``vision`` extra, which .ci/install-extras puts in .extras/vision; without them these
tests are skipped. This environment's torchvision wheel is built for another torch build: the commands here run with
tests/torchvision_ops.py imported first, which declares the two ops its import needs (see there). The figures are
ResNet's by formula.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env, extra_path, run_cli

pytestmark = pytest.mark.slow
COUNT_ONLY = ["timing.enabled=false", "peak.measure=false", "batch.size=1"]
WIDTHS = (64, 128, 256, 512)


@pytest.fixture(scope="module")
def vision_path() -> list[str]:
    return sorted({path for path in [extra_path("vision", "torchvision"), extra_path("vision", "timm")] if path})


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def resnet(blocks: tuple[int, ...], bottleneck: bool, side: int = 224, classes: int = 1000) -> tuple[int, int]:
    """(MACs, params) of a ResNet on one (3, side, side) image, layer by layer: a 7x7/2 stem conv and a 3x3/2 max pool;
    per block two 3x3 convs (basic) or 1x1, 3x3 (carrying the stride), 1x1 to 4x the width (bottleneck), and a 1x1
    downsample conv where the shape changes; every conv without bias and followed by a batch norm (2 parameters a
    channel; its arithmetic is not a MAC); then the fully connected layer."""
    macs = params = 0

    def conv(c_in: int, c_out: int, kernel: int, out_side: int) -> None:
        nonlocal macs, params
        macs += out_side * out_side * c_out * c_in * kernel * kernel
        params += c_out * c_in * kernel * kernel + 2 * c_out  # the weights, then the batch norm's scale and shift

    def halved(length: int) -> int:  # a stride-2 conv or pool with "same" padding: ceil(length / 2)
        return (length - 1) // 2 + 1

    conv(3, 64, 7, halved(side))
    size, c_in = halved(halved(side)), 64
    for stage, (count, width) in enumerate(zip(blocks, WIDTHS, strict=True)):
        for index in range(count):
            out = halved(size) if stage and not index else size
            c_out = 4 * width if bottleneck else width
            if bottleneck:
                conv(c_in, width, 1, size), conv(width, width, 3, out), conv(width, c_out, 1, out)
            else:
                conv(c_in, width, 3, out), conv(width, width, 3, out)
            if out != size or c_in != c_out:
                conv(c_in, c_out, 1, out)
            c_in, size = c_out, out
    return macs + c_in * classes, params + c_in * classes + classes


def test_resnet50_by_name(tmp_path: Path, store_uri: str, vision_path: list[str]) -> None:
    done = run_cli(["model=torchvision", "model.name=resnet50", *COUNT_ONLY], cwd=tmp_path, pythonpath=vision_path,
                   torchvision_ops=True, MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    macs, params = resnet((3, 4, 6, 3), bottleneck=True)
    assert (macs, params) == (4_089_184_256, 25_557_032)  # 4.089 GMACs
    assert run.data.metrics["cost/macs"] == macs and run.data.metrics["cost/params"] == params
    assert run.info.run_name == "resnet50-b1-cpu-fp32" and run.data.tags["model"] == "ResNet"
    assert "[1, 3, 224, 224]" in run.data.tags["mlflow.note.content"]
    # 53 batch norms: the note names three, then how many more (it used to list all 53 on one 910-character line)
    assert "BatchNorm2d (bn1, layer1.0.bn1, layer1.0.bn2 (+50 more)): thop" in done.stdout


def test_timm_takes_its_input_size_from_the_pretrained_config(
    tmp_path: Path, store_uri: str, vision_path: list[str]
) -> None:
    """timm's resnet18 (224 x 224 in its pretrained config) and torchvision's inception_v3, whose weights document a
    299 x 299 crop; batch.height/width replace the model's own size."""
    where = {"cwd": tmp_path, "pythonpath": vision_path, "torchvision_ops": True, "MLFLOW_TRACKING_URI": store_uri}
    for library in ("timm", "torchvision"):
        done = run_cli([f"model={library}", "model.name=resnet18", *COUNT_ONLY], **where)
        assert done.returncode == 0, done.stderr[-3000:]
    macs, params = resnet((2, 2, 2, 2), bottleneck=False)
    assert (macs, params) == (1_814_073_344, 11_689_512)
    runs = all_runs(store_uri)
    assert len(runs) == 2 and {r.data.metrics["cost/macs"] for r in runs} == {macs}
    assert {r.data.metrics["cost/params"] for r in runs} == {params}
    done = run_cli(["model=torchvision", "model.name=inception_v3", "+model.init_weights=false", *COUNT_ONLY], **where)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1, 3, 299, 299]" in done.stdout
    done = run_cli(["model=torchvision", "model.name=resnet18", "batch.height=112", "batch.width=112", *COUNT_ONLY],
                   **where)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{resnet((2, 2, 2, 2), bottleneck=False, side=112)[0]:,} " in done.stdout


def test_unknown_names_are_refused_before_any_run(tmp_path: Path, vision_path: list[str]) -> None:
    done = run_cli(["model=torchvision", "model.name=resnet51"], cwd=tmp_path, pythonpath=vision_path,
                   torchvision_ops=True)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "model.name='resnet51' is not allowed: torchvision has no model of that name (did you mean" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=torchvision", "model.name=vit_b_16", "batch.height=64", "batch.width=64"],
         "batch.height=64, batch.width=64 is not allowed for model.name='vit_b_16': it refuses a 64x64 image "
         "(AssertionError: Wrong image height! Expected 224 but got 64!); build it for that size with "
         "+model.image_size=64"),
        # torchvision's ViT takes square images only: no key builds it for 64 x 48
        (["model=torchvision", "model.name=vit_b_16", "batch.height=64", "batch.width=48"],
         "it refuses a 64x48 image (AssertionError: Wrong image height! Expected 224 but got 64!); choose a size it "
         "takes"),
        (["model=torchvision", "model.name=inception_v3", "+model.init_weights=false", "batch.height=64"],
         "batch.height=64 is not allowed for model.name='inception_v3': it refuses a 64x299 image (RuntimeError: "
         "Calculated padded input size per channel: (2 x 17). Kernel size: (3 x 3). Kernel size can't be greater than "
         "actual input size); choose a size it takes"),
        (["model=timm", "model.name=vit_tiny_patch16_224", "batch.height=64", "batch.width=48"],
         "batch.height=64, batch.width=48 is not allowed for model.name='vit_tiny_patch16_224': it refuses a 64x48 "
         "image (AssertionError: Input height (64) doesn't match model (224)); build it for that size with "
         "+model.img_size=[64,48] (over a sweep of sizes: '+model.img_size=[${batch.height},${batch.width}]')"),
        # the model's own size is the one it was built for, and the key it has is named without a +
        (["model=timm", "model.name=vit_tiny_patch16_224", "+model.img_size=96", "batch.height=64"],
         "batch.height=64 is not allowed for model.name='vit_tiny_patch16_224': it refuses a 64x96 image "
         "(AssertionError: Input height (64) doesn't match model (96)); build it for that size with "
         "model.img_size=[64,96]"),
    ],
)  # fmt: skip
def test_an_image_size_the_model_refuses_is_refused_before_any_run(
    tmp_path: Path, vision_path: list[str], args: list[str], message: str
) -> None:
    """A ViT is built for one image size: batch.height/width at another failed inside the forward, after the run
    existed. Preflight runs the model on meta at that size (and at its own, which runs) and names the key that builds
    it for the size where one does."""
    done = run_cli(args, cwd=tmp_path, pythonpath=vision_path, torchvision_ops=True)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()


def test_the_named_override_builds_a_model_for_that_size(
    tmp_path: Path, store_uri: str, vision_path: list[str]
) -> None:
    """timm's ViT-Ti/16 built for 64 x 48 (+model.img_size, as preflight names it): N = 4 * 3 = 12 patches, T = 13
    tokens with [CLS], d = 192, 12 layers, MLP 4d, 1,000 classes. MACs: patch embedding N*d*3*16*16; per layer
    T*d*3d + T*d*d + 2*T*T*d + 2*T*d*4d; the head on [CLS] d*1000."""
    d, layers, patches = 192, 12, (64 // 16) * (48 // 16)
    tokens = patches + 1
    layer = tokens * d * 3 * d + tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * 4 * d
    macs = patches * d * 3 * 16 * 16 + layers * layer + d * 1000
    done = run_cli(["model=timm", "model.name=vit_tiny_patch16_224", "batch.height=64", "batch.width=48",
                    "+model.img_size=[64,48]", *COUNT_ONLY], cwd=tmp_path, pythonpath=vision_path,
                   torchvision_ops=True, MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    assert run.data.metrics["cost/macs"] == macs == 71_749_632
    # built for a size, fed that size without batch.height/width (it was fed the pretrained config's 224: FAILED)
    for library, name, key in (("timm", "vit_tiny_patch16_224", "img_size"), ("torchvision", "vit_b_16", "image_size")):
        built_for = [f"model={library}", f"model.name={name}", f"+model.{key}=96", "model.init=meta", *COUNT_ONLY]
        done = run_cli(built_for, cwd=tmp_path, pythonpath=vision_path, torchvision_ops=True,
                       MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
        assert done.returncode == 0 and "[1, 3, 96, 96]" in done.stdout, done.stderr[-3000:]


def test_regnet_is_built_without_weights(tmp_path: Path, store_uri: str, vision_path: list[str]) -> None:
    """RegNet derives its widths with tensor arithmetic in its constructor, which failed under model.init=meta
    ("Cannot copy out of meta tensor"); built without weights it counts what it counts with them."""
    where = {"cwd": tmp_path, "pythonpath": vision_path, "torchvision_ops": True, "MLFLOW_TRACKING_URI": store_uri}
    for init in ("meta", "real"):
        done = run_cli(["model=torchvision", "model.name=regnet_y_400mf", f"model.init={init}", *COUNT_ONLY], **where)
        assert done.returncode == 0, done.stderr[-3000:]
    meta, real = sorted(all_runs(store_uri), key=lambda run: run.data.tags["mlflow.note.content"].count("meta"))
    assert [run.info.status for run in (meta, real)] == ["FINISHED", "FINISHED"]
    for key in ("cost/macs", "cost/flops", "cost/params"):
        assert meta.data.metrics[key] == real.data.metrics[key] > 0


def test_a_torchvision_that_does_not_import_is_reported_by_its_own_error(
    tmp_path: Path, store_uri: str, vision_path: list[str]
) -> None:
    """Where torchvision's compiled ops do not load (this environment), importing it fails; the run says how
    ('RuntimeError: operator torchvision::nms does not exist'), not Hydra's 'Error locating target'."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torchvision"], env=cli_env(pythonpath=vision_path), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    if probe.returncode == 0:
        pytest.skip("torchvision imports in this environment")
    cause = probe.stderr.strip().splitlines()[-1]
    done = run_cli(["model=torchvision", "model.name=resnet18", *COUNT_ONLY], cwd=tmp_path, pythonpath=vision_path,
                   MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert done.returncode == 1
    (run,) = all_runs(store_uri)
    assert run.info.status == "FAILED" and run.data.tags["error"] == cause
    assert "HYDRA_FULL_ERROR" not in done.stderr and "Error locating target" not in run.data.tags["error"]
