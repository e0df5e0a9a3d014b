"""A fingerprint of the hardware and software stack, so runs compare across machines.

Device facts come from torch, psutil and (when an NVIDIA driver is present) nvidia-ml-py; nothing here needs a GPU.
"""

from __future__ import annotations

import platform
import socket
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import psutil
import torch


@dataclass(frozen=True)
class Fingerprint:
    """Where a measurement was taken. Every field is a string, ready to be a tag; empty means 'not present'."""

    device_type: str
    device_name: str
    hardware: str  # short label to group by, e.g. "cpu:AMD EPYC 7B13 x2" or "cuda:NVIDIA H100 80GB HBM3"
    cpu_model: str
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

    def as_tags(self, prefix: str = "") -> dict[str, str]:
        return {f"{prefix}{key}": value for key, value in asdict(self).items()}


def cpu_model_name() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else what the platform module reports)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _nvidia_driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, no permission: the tag stays empty
        return ""
    return driver.decode() if isinstance(driver, bytes) else str(driver)


def fingerprint(device: str | torch.device = "cpu") -> Fingerprint:
    """Describe the machine and the stack that ``device`` runs on."""
    device = torch.device(device)
    cpu = cpu_model_name()
    logical = psutil.cpu_count(logical=True) or 0
    physical = psutil.cpu_count(logical=False) or 0
    gpu = {"name": "", "cc": "", "sms": "", "mem": ""}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        gpu = {
            "name": properties.name,
            "cc": f"{properties.major}.{properties.minor}",
            "sms": str(properties.multi_processor_count),
            "mem": f"{properties.total_memory / 2**30:.1f}",
        }
        hardware = f"cuda:{properties.name}"
    else:
        hardware = f"cpu:{cpu} x{torch.get_num_threads()}"
    commit = _git("rev-parse", "HEAD")
    return Fingerprint(
        device_type=device.type,
        device_name=gpu["name"] or cpu,
        hardware=hardware,
        cpu_model=cpu,
        cpu_physical_cores=str(physical),
        cpu_logical_cores=str(logical),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        torch_threads=str(torch.get_num_threads()),
        memory_total_gib=f"{psutil.virtual_memory().total / 2**30:.1f}",
        gpu_name=gpu["name"],
        gpu_compute_capability=gpu["cc"],
        gpu_sm_count=gpu["sms"],
        gpu_memory_gib=gpu["mem"],
        nvidia_driver=_nvidia_driver() if torch.cuda.is_available() else "",
        cuda_version=torch.version.cuda or "",
        cudnn_version=str(torch.backends.cudnn.version() or "") if torch.backends.cudnn.is_available() else "",
        torch_version=torch.__version__,
        thop_version=_version("thop"),
        mlflow_version=_version("mlflow") or _version("mlflow-skinny"),
        python_version=platform.python_version(),
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        git_commit=commit,
        git_dirty=("true" if _git("status", "--porcelain", "--untracked-files=no") else "false") if commit else "",
    )
