"""The vendor peak table, looked up with device names as torch.cuda.get_device_name() returns them, and the CPU
peak estimate. Figures are dense (2:4-sparse datasheet figures halved); each is checked against its datasheet."""

from __future__ import annotations

import pytest

from gflops_track.peaks.table import GPU_SPECS, cpu_peak_estimate, fp32_flops_per_cycle, gpu_spec


@pytest.mark.parametrize(
    ("device_name", "card", "bf16", "bandwidth"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5, 3350),  # datasheet: 1,979 TFLOPS with sparsity -> /2
        ("NVIDIA H100 PCIe", "H100 PCIe", 756, 2000),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5, 3900),
        ("NVIDIA H200", "H200 SXM", 989.5, 4800),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5, 4800),  # 1,671 sparse -> /2; not the SXM's 989.5
        ("NVIDIA GH200 480GB", "GH200 96GB HBM3", 989.5, 4000),  # not the H200's 4,800 GB/s
        ("NVIDIA GH200 144G HBM3e", "GH200 144GB HBM3e", 989.5, 4900),
        ("NVIDIA B200", "B200", 2250, 8000),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB", 312, 1555),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", 312, 2039),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 312, 1935),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB", 312, 1555),
        ("NVIDIA A10", "A10", 125, 600),  # not an A100
        ("NVIDIA L4", "L4", 121, 300),  # datasheet gives 242 with sparsity only
        ("NVIDIA L40S", "L40S", 362, 864),
        ("NVIDIA GeForce RTX 3090", "RTX 3090", 71, 936),  # FP32 accumulate: half the FP16-accumulate rate
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2, 1008),
    ],
)
def test_gpu_spec_table_dense_figures(device_name: str, card: str, bf16: float, bandwidth: float) -> None:
    spec = gpu_spec(device_name)
    assert spec is not None and spec.name == card
    assert spec.tflops.get("bf16") == bf16 and spec.bandwidth_gb_s == bandwidth and spec.source


@pytest.mark.parametrize(
    "device_name",
    [
        "NVIDIA A100-SXM4-40GB MIG 1g.5gb",  # a 1/7 slice: the full chip's figure would be 7x too high
        "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
        "NVIDIA GeForce RTX 4090 D",  # 114 of 128 SMs
        "NVIDIA GeForce RTX 4090 Laptop GPU",  # AD103, clocked by the laptop's power limit
        "NVIDIA GeForce RTX 3090 Ti",
        "NVIDIA GH200 624GB",  # a memory configuration whose bandwidth the table does not know
        "NVIDIA GB200",  # Grace Blackwell: not the HGX B200's figures, though "B200" is in its name
        "NVIDIA GeForce GTX 1080",
        "NVIDIA A10G",  # AWS's variant, not the A10
        "NVIDIA L40",  # not the L40S
        "NVIDIA H800",
    ],
)
def test_slices_variants_and_unknown_devices_get_no_figure(device_name: str) -> None:
    assert gpu_spec(device_name) is None  # never another card's figure


def test_old_cards_have_only_their_dtypes() -> None:
    t4, v100, v100s = gpu_spec("Tesla T4"), gpu_spec("Tesla V100-SXM2-16GB"), gpu_spec("Tesla V100S-PCIE-32GB")
    assert t4 is not None and t4.tflops.get("fp16") == 65 and t4.tflops.get("bf16") is None
    assert v100 is not None and v100.name == "V100 SXM2" and v100.tflops.get("tf32") is None
    assert v100s is not None and v100s.name == "V100S PCIe" and v100s.bandwidth_gb_s == 1134
    assert gpu_spec("Tesla V100-PCIE-32GB") == next(spec for _, spec in GPU_SPECS if spec and spec.name == "V100 PCIe")


def test_every_entry_names_its_source_and_is_dense() -> None:
    """Tensor-core rates are at least the FP32 rate; on data-centre cards BF16 is 2x TF32 (within 2%: rounding)."""
    for _, spec in GPU_SPECS:
        if spec is None:
            continue
        assert spec.source.endswith(("datasheet", "whitepaper")) and spec.bandwidth_gb_s > 0
        assert spec.tflops["fp16"] >= spec.tflops["fp32"]
        if "tf32" in spec.tflops and not spec.name.startswith("RTX"):
            assert spec.tflops["bf16"] == pytest.approx(2 * spec.tflops["tf32"], rel=0.02)  # L40S: 362.05 vs 183


def test_cpu_flops_per_cycle_and_estimate() -> None:
    assert fp32_flops_per_cycle("AVX512", "Intel(R) Xeon(R) Platinum 8375C") == 2 * 16 * 2  # 2 FMA units x 16 lanes
    assert fp32_flops_per_cycle("AVX512", "AMD EPYC 9654") == 32  # Zen 4: 512-bit as 2x256
    assert fp32_flops_per_cycle("AVX2", "AMD EPYC 7B13") == 2 * 8 * 2
    assert fp32_flops_per_cycle("DEFAULT", "ARM") == 2 * 4 * 2
    estimate = cpu_peak_estimate()
    if estimate is not None:
        assert estimate.gflop_per_s == pytest.approx(estimate.cores * estimate.clock_ghz * estimate.flops_per_cycle)
