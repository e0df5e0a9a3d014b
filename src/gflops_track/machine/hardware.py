"""A fingerprint of the hardware and software stack, so runs compare across machines.

Device facts come from torch, psutil, Linux's /proc/cpuinfo and sysfs, and (when an NVIDIA driver is present)
nvidia-ml-py; nothing here needs a GPU. The ``hardware`` label names the machine, never how a run used it: the thread
count is its own tag (``torch_threads``). VMs may report a CPU model string as bare as "AMD EPYC", so the label adds
the microarchitecture (from CPUID family/model, or ARM's implementer/part), the physical core count and the widest
vector ISA, e.g. ``cpu:AMD EPYC 9B14 (Zen 4, 2 cores, AVX-512)``.
"""

from __future__ import annotations

import platform
import re
import socket
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from gflops_track.results.fingerprint import Fingerprint

if TYPE_CHECKING:
    import torch

CPUINFO = Path("/proc/cpuinfo")
CPU0_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")

# ISA flags that change which kernels run (x86 /proc/cpuinfo "flags", ARM "Features"), in the order they are tagged.
ISA_FLAGS = ("fma", "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "sve", "sve2", "bf16", "i8mm")  # fmt: skip
# The widest vector ISA present, as the label shows it: first match wins.
ISA_LEVELS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sve2", "SVE2"), ("sve", "SVE"),
              ("asimd", "NEON"))  # fmt: skip

# (vendor, family, first model, last model, microarchitecture): CPUID display family/model as Linux prints them.
# Sources: AMD's Processor Programming Reference per family, Intel's SDM vol. 4 table 2-1, Linux's
# arch/x86/include/asm/intel-family.h.
X86_MICROARCHITECTURES: tuple[tuple[str, int, int, int, str], ...] = (
    ("AuthenticAMD", 23, 0x00, 0x07, "Zen"),  # Naples, Summit Ridge
    ("AuthenticAMD", 23, 0x08, 0x0F, "Zen+"),  # Pinnacle Ridge, Colfax
    ("AuthenticAMD", 23, 0x10, 0x1F, "Zen"),  # Raven Ridge (0x18 Picasso is Zen+, rare in servers)
    ("AuthenticAMD", 23, 0x30, 0x3F, "Zen 2"),  # Rome (0x31 = 49)
    ("AuthenticAMD", 23, 0x60, 0x7F, "Zen 2"),  # Renoir, Lucienne, Matisse (0x71)
    ("AuthenticAMD", 25, 0x00, 0x0F, "Zen 3"),  # Milan (0x01)
    ("AuthenticAMD", 25, 0x10, 0x1F, "Zen 4"),  # Genoa (0x11 = 17)
    ("AuthenticAMD", 25, 0x20, 0x5F, "Zen 3"),  # Vermeer (0x21), Rembrandt (0x44, Zen 3+), Cezanne (0x50)
    ("AuthenticAMD", 25, 0x60, 0x7F, "Zen 4"),  # Raphael (0x61), Phoenix (0x74)
    ("AuthenticAMD", 25, 0xA0, 0xAF, "Zen 4c"),  # Bergamo, Siena
    ("AuthenticAMD", 26, 0x00, 0x0F, "Zen 5"),  # Turin (0x02)
    ("AuthenticAMD", 26, 0x10, 0x1F, "Zen 5c"),  # Turin dense (0x11)
    ("AuthenticAMD", 26, 0x20, 0x4F, "Zen 5"),  # Strix Point (0x24), Granite Ridge (0x44)
    ("GenuineIntel", 6, 0x4F, 0x4F, "Broadwell"),  # Broadwell-EP/EX
    ("GenuineIntel", 6, 0x55, 0x55, "Skylake-SP"),  # stepping >= 5: Cascade Lake, 11: Cooper Lake (see below)
    ("GenuineIntel", 6, 0x6A, 0x6A, "Ice Lake-SP"),
    ("GenuineIntel", 6, 0x6C, 0x6C, "Ice Lake-D"),
    ("GenuineIntel", 6, 0x8F, 0x8F, "Sapphire Rapids"),  # 143
    ("GenuineIntel", 6, 0xCF, 0xCF, "Emerald Rapids"),  # 207
    ("GenuineIntel", 6, 0xAD, 0xAE, "Granite Rapids"),  # 173 (-X), 174 (-D)
    ("GenuineIntel", 6, 0xAF, 0xAF, "Sierra Forest"),
    ("GenuineIntel", 6, 0x5E, 0x5E, "Skylake"),
    ("GenuineIntel", 6, 0x8E, 0x8E, "Kaby Lake"),
    ("GenuineIntel", 6, 0x9E, 0x9E, "Coffee Lake"),
    ("GenuineIntel", 6, 0x8C, 0x8D, "Tiger Lake"),
    ("GenuineIntel", 6, 0x97, 0x9A, "Alder Lake"),
    ("GenuineIntel", 6, 0xB7, 0xB7, "Raptor Lake"),
    ("GenuineIntel", 6, 0xBA, 0xBA, "Raptor Lake"),
    ("GenuineIntel", 6, 0xBF, 0xBF, "Raptor Lake"),
    ("GenuineIntel", 6, 0xAA, 0xAC, "Meteor Lake"),
)
INTEL_SKYLAKE_SP_STEPPINGS = {5: "Cascade Lake", 6: "Cascade Lake", 7: "Cascade Lake", 11: "Cooper Lake"}
# (implementer, part) from /proc/cpuinfo on ARM; Arm's Technical Reference Manuals (MIDR_EL1) per core.
ARM_MICROARCHITECTURES: dict[tuple[int, int], str] = {
    (0x41, 0xD0C): "Neoverse N1",  # AWS Graviton2, Ampere Altra
    (0x41, 0xD40): "Neoverse V1",  # AWS Graviton3
    (0x41, 0xD49): "Neoverse N2",
    (0x41, 0xD4F): "Neoverse V2",  # NVIDIA Grace, AWS Graviton4, Google Axion
    (0x41, 0xD8E): "Neoverse N3",
    (0x41, 0xD84): "Neoverse V3",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD0B): "Cortex-A76",
    (0xC0, 0xAC3): "AmpereOne",
}
ARM_IMPLEMENTERS = {0x41: "ARM", 0xC0: "Ampere", 0x61: "Apple", 0x51: "Qualcomm", 0x48: "HiSilicon"}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as /proc/cpuinfo describes its first processor. x86: vendor id, CPUID family/model/stepping. ARM: the
    implementer and part numbers (MIDR) and ``stepping`` as rNpM (variant, revision)."""

    model_name: str
    vendor: str = ""
    family: int | None = None
    model: int | None = None
    stepping: str = ""
    implementer: int | None = None
    part: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def microarchitecture(self) -> str:
        """Known microarchitecture name, else ''."""
        if self.implementer is not None and self.part is not None:
            return ARM_MICROARCHITECTURES.get((self.implementer, self.part), "")
        for vendor, family, first, last, name in X86_MICROARCHITECTURES:
            if (
                (self.vendor, self.family) == (vendor, family)
                and self.model is not None
                and first <= self.model <= last
            ):
                if name == "Skylake-SP" and self.stepping.isdigit():
                    return INTEL_SKYLAKE_SP_STEPPINGS.get(int(self.stepping), name)
                return name
        return ""

    @property
    def isa(self) -> str:
        """The ISA flags of ``ISA_FLAGS`` this CPU has, comma-separated."""
        return ",".join(flag for flag in ISA_FLAGS if flag in self.flags)

    @property
    def isa_level(self) -> str:
        return next((label for flag, label in ISA_LEVELS if flag in self.flags), "")

    def tag_fields(self) -> dict[str, str]:
        """The Fingerprint's cpu_* identity fields (ARM: implementer and part in place of family and model)."""
        arm = self.implementer is not None
        return {
            "cpu_vendor": ARM_IMPLEMENTERS.get(self.implementer or 0, "") if arm else self.vendor,
            "cpu_family": f"{self.implementer:#x}" if arm else ("" if self.family is None else str(self.family)),
            "cpu_model_number": f"{self.part or 0:#x}" if arm else ("" if self.model is None else str(self.model)),
            "cpu_stepping": self.stepping,
            "cpu_microarchitecture": self.microarchitecture,
            "cpu_isa": self.isa,
        }

    @property
    def identity(self) -> str:
        """Family/model/stepping (x86) or implementer/part/revision (ARM), as one string."""
        if self.implementer is not None:
            return f"implementer {self.implementer:#x} part {self.part or 0:#x} {self.stepping}".strip()
        if self.family is None:
            return ""
        return f"family {self.family} model {self.model} stepping {self.stepping}"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor block of a /proc/cpuinfo text (x86 or ARM)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields.get("processor") is not None and ("flags" in fields or "features" in fields):
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())

    def number(key: str) -> int | None:
        try:
            return int(fields[key], 0)
        except (KeyError, ValueError):
            return None

    implementer, part = number("cpu implementer"), number("cpu part")
    if implementer is not None:
        name = fields.get("model name") or " ".join(
            filter(None, [ARM_IMPLEMENTERS.get(implementer, f"{implementer:#x}"),
                          ARM_MICROARCHITECTURES.get((implementer, part or 0), f"part {part or 0:#x}")])
        )  # fmt: skip
        stepping = f"r{number('cpu variant') or 0}p{number('cpu revision') or 0}"
        return CpuInfo(name, "", None, None, stepping, implementer, part, frozenset(fields.get("features", "").split()))
    return CpuInfo(
        model_name=fields.get("model name") or fields.get("hardware") or platform.processor() or platform.machine(),
        vendor=fields.get("vendor_id", ""),
        family=number("cpu family"),
        model=number("model"),
        stepping=fields.get("stepping", ""),
        flags=frozenset(fields.get("flags", "").split()),
    )


def read_cpuinfo(path: Path = CPUINFO) -> CpuInfo:
    """This machine's CPU (Linux /proc/cpuinfo; elsewhere only the platform module's name)."""
    try:
        return parse_cpuinfo(path.read_text(errors="replace"))
    except OSError:
        return CpuInfo(platform.processor() or platform.machine())


def _size_kib(text: str) -> int | None:
    """sysfs cache size ('512K', '32768K', '1M') in KiB."""
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip())
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2)
    return {"": value // 1024, "K": value, "M": value * 1024, "G": value * 1024**2}[unit]


def cache_sizes_kib(root: Path = CPU0_CACHES) -> dict[int, int]:
    """Unified/data cache size (KiB) per level as cpu0 sees it (sysfs); L2 is per core, L3 per shared instance."""
    sizes: dict[int, int] = {}
    for index in sorted(root.glob("index[0-9]*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _size_kib((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size:
            sizes[level] = size
    return sizes


def cpu_label(cpu: CpuInfo, cores: int) -> str:
    """The short CPU label: model name, then microarchitecture (else family/model/stepping), physical cores and the
    widest vector ISA, e.g. 'AMD EPYC 9B14 (Zen 4, 2 cores, AVX-512)'."""
    kind = cpu.microarchitecture or cpu.identity
    kind = "" if kind and kind in cpu.model_name else kind  # ARM names are built from the microarchitecture
    details = [kind, f"{cores} core{'s' if cores != 1 else ''}", cpu.isa_level]
    return f"{cpu.model_name} ({', '.join(filter(None, details))})"


def cpu_model_name() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, else what the platform module reports)."""
    return read_cpuinfo().model_name


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


def git_commit() -> str:
    """The commit checked out in the working directory ("" outside a git repository)."""
    return _git("rev-parse", "HEAD")


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
    import torch  # here, not at the top: the CPU facts in this module serve `gflops-track compare`, without torch

    device = torch.device(device)
    info = read_cpuinfo()
    cpu = info.model_name
    caches = cache_sizes_kib()
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
        hardware = f"cpu:{cpu_label(info, physical or logical)}"
    commit = git_commit()
    return Fingerprint(
        device_type=device.type,
        device_name=gpu["name"] or cpu,
        hardware=hardware,
        cpu_model=cpu,
        **info.tag_fields(),
        cpu_l2_kib_per_core=str(caches[2]) if 2 in caches else "",
        cpu_l3_mib=f"{caches[3] / 1024:g}" if 3 in caches else "",
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


def free_memory(device: str | torch.device = "cpu") -> tuple[int, str]:
    """Bytes a model's weights could still take on ``device``, and where that is in words: the host's available
    memory (a model is built there first), or the less of it and the GPU's free memory for a CUDA device."""
    import torch

    device = torch.device(device)
    host = psutil.virtual_memory().available
    if device.type != "cuda":
        return host, "free"
    gpu, _total = torch.cuda.mem_get_info(device)
    return (gpu, f"free on {device}") if gpu < host else (host, "free on the host")


CPU_ROOT = Path("/sys/devices/system/cpu")
GPU_SM_ON_CHIP_FALLBACK = 512 * 2**10  # per SM when torch does not say: 256 KiB L1/shared + 256 KiB registers


def cpu_cache_bytes(root: Path = CPU_ROOT) -> int | None:
    """Every data and unified cache of the machine, each shared instance once (sysfs ``shared_cpu_list``), in bytes:
    the most data that can stay on chip between two ops. None when sysfs does not say."""
    instances: dict[tuple[int, str], int] = {}
    for index in root.glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _size_kib((index / "size").read_text())
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size:
            instances[(level, shared)] = size * 2**10
    return sum(instances.values()) or None


def gpu_on_chip_bytes(device: torch.device) -> int:
    """L2 plus every SM's shared memory/L1 and registers, in bytes: the most data a CUDA device keeps on chip."""
    import torch  # here, not at the top (see fingerprint)

    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    shared = int(getattr(props, "shared_memory_per_multiprocessor", 0) or 0)
    registers = int(getattr(props, "regs_per_multiprocessor", 0) or 0) * 4  # 32-bit registers
    per_sm = shared + registers if shared and registers else GPU_SM_ON_CHIP_FALLBACK
    return l2 + props.multi_processor_count * per_sm


def on_chip_bytes(device: torch.device) -> int | None:
    """The bytes a device can keep on chip (CPU: its caches; CUDA: L2, shared memory and registers)."""
    return gpu_on_chip_bytes(device) if device.type == "cuda" else cpu_cache_bytes()
