"""Where a measurement was taken (``Fingerprint``): the hardware and software facts every run carries as tags. The
facts are read by ``gflops_track.machine.hardware``."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Fingerprint:
    """Where a measurement was taken. Every field is a string, ready to be a tag; empty means 'not present'."""

    device_type: str
    device_name: str
    hardware: str  # label to group by: "cpu:AMD EPYC 9B14 (Zen 4, 2 cores, AVX-512)", "cuda:NVIDIA H100 80GB HBM3"
    cpu_model: str
    cpu_vendor: str
    cpu_family: str  # CPUID display family (x86); the implementer on ARM
    cpu_model_number: str  # CPUID display model (x86); the part on ARM
    cpu_stepping: str  # x86 stepping; ARM rNpM
    cpu_microarchitecture: str  # e.g. "Zen 4", "Sapphire Rapids", "Neoverse V1"; empty when not in our table
    cpu_isa: str  # the ISA flags that matter, comma-separated: fma,avx2,avx512f,avx512_bf16,amx_tile,amx_bf16,...
    cpu_l2_kib_per_core: str
    cpu_l3_mib: str  # one L3 instance (shared by the cores of a CCX/socket)
    cpu_physical_cores: str
    cpu_logical_cores: str
    cpu_capability: str  # torch's CPU kernel level: DEFAULT, AVX2, AVX512, ...
    torch_threads: str
    memory_total_gib: str
    gpu_name: str
    gpu_compute_capability: str
    gpu_sm_count: str
    gpu_memory_gib: str
    nvidia_driver: str
    cuda_version: str
    cudnn_version: str
    torch_version: str
    thop_version: str
    mlflow_version: str
    python_version: str
    hostname: str
    os: str
    git_commit: str
    git_dirty: str

    def as_tags(self) -> dict[str, str]:
        return asdict(self)
