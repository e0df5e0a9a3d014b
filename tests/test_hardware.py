"""The fingerprint describes this machine and stack, and its hardware label is short enough to group by."""

from __future__ import annotations

import platform

import torch

from gflops_track.hardware import fingerprint


def test_cpu_fingerprint() -> None:
    facts = fingerprint("cpu")
    assert facts.device_type == "cpu"
    assert facts.hardware == f"cpu:{facts.cpu_model} x{torch.get_num_threads()}" and len(facts.hardware) < 100
    assert int(facts.cpu_logical_cores) >= 1 and int(facts.torch_threads) == torch.get_num_threads()
    assert facts.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert facts.torch_version == torch.__version__ and facts.python_version == platform.python_version()
    assert facts.thop_version and facts.mlflow_version
    tags = facts.as_tags()
    assert tags["hardware"] == facts.hardware and all(isinstance(v, str) for v in tags.values())
