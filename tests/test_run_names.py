"""How a run's name spells its device (one name per GPU however it was asked for, so runs pair by name: the gate's
``rows matched by run name``; two GPUs of one machine never share one) and a swept override. Pure: no GPU needed."""

from __future__ import annotations

import pytest
import torch

from gflops_track.app.job import device_label, variant_segment


@pytest.mark.parametrize(
    ("device", "label"),
    [
        (torch.device("cpu"), "cpu"),
        (torch.device("cuda"), "cuda"),  # device=auto on a GPU machine
        (torch.device("cuda", 0), "cuda"),  # device=cuda (conf/device/cuda.yaml: index 0): the same GPU, the same name
        (torch.device("cuda", 1), "cuda:1"),  # device=cuda device.index=1: another GPU, another name
    ],
)
def test_the_device_in_a_run_name(device: torch.device, label: str) -> None:
    assert device_label(device) == label


@pytest.mark.parametrize(
    ("override", "segment"),
    [
        ("norm_fn=group", "group"),
        ("batch.size=8", "b8"),
        ("model.planes=64", "planes64"),
        ('device="cpu"', "cpu"),  # -m device="cpu",auto: the quotes are Hydra's, not the value's
        ("precision='bf16'", "bf16"),
    ],
)
def test_a_swept_override_leads_the_run_name_as_its_value(override: str, segment: str) -> None:
    assert variant_segment(override) == segment
