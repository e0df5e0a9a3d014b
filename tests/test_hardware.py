"""The fingerprint describes this machine and stack; its hardware label names the machine (never the thread count),
and tells apart CPUs whose model strings do not (real /proc/cpuinfo excerpts of three server CPUs)."""

from __future__ import annotations

import platform
from pathlib import Path

import psutil
import pytest
import torch

from gflops_track.machine.hardware import (
    CpuInfo,
    cache_sizes_kib,
    cpu_label,
    fingerprint,
    parse_cpuinfo,
    read_cpuinfo,
)
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.pipeline.runtime import runtime_context

# Google Cloud c3d (AMD EPYC 9B14, Genoa): first processor block, flags shortened to the ones around what we read.
ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9B14
stepping	: 1
microcode	: 0xffffffff
cpu MHz		: 2599.998
cache size	: 1024 KB
physical id	: 0
siblings	: 4
core id		: 0
cpu cores	: 2
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm \
constant_tsc rep_good nopl pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand \
hypervisor lahf_lm cmp_legacy bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt \
clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero xsaveerptr arat avx512vbmi \
umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm
bogomips	: 5199.99

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9B14
"""

# The same Genoa host as some VMs show it: the model string cut to the vendor's family name.
ZEN4_BARE = ZEN4.replace("AMD EPYC 9B14", "AMD EPYC")
# And a Milan (Zen 3, family 25 model 1) VM with the same bare string: it must not share the label.
ZEN3_BARE = (
    ZEN4_BARE.replace("model\t\t: 17", "model\t\t: 1").replace(" avx512f avx512dq", "").replace(" avx512_bf16", "")
)

# Google Cloud c3 (Intel Xeon Platinum 8481C, Sapphire Rapids).
SAPPHIRE_RAPIDS = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
stepping	: 8
microcode	: 0xffffffff
cpu MHz		: 2699.998
cache size	: 107520 KB
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht \
syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 \
fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch \
bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni \
avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 arat avx512vbmi umip avx512_vbmi2 gfni vaes \
vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq la57 rdpid cldemote movdiri movdir64b fsrm md_clear serialize \
tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities
bogomips	: 5399.99
"""

# AWS c7g (Graviton3 = Arm Neoverse V1): no "model name" line on arm64.
NEOVERSE_V1 = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop \
sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1

processor	: 1
BogoMIPS	: 2100.00
"""


@pytest.mark.parametrize(
    ("text", "cores", "label", "microarchitecture", "isa", "identity"),
    [
        (ZEN4, 2, "AMD EPYC 9B14 (Zen 4, 2 cores, AVX-512)", "Zen 4", "fma,avx2,avx512f,avx512_bf16",
         ("AuthenticAMD", "25", "17", "1")),
        (ZEN4_BARE, 2, "AMD EPYC (Zen 4, 2 cores, AVX-512)", "Zen 4", "fma,avx2,avx512f,avx512_bf16",
         ("AuthenticAMD", "25", "17", "1")),
        (ZEN3_BARE, 2, "AMD EPYC (Zen 3, 2 cores, AVX2)", "Zen 3", "fma,avx2", ("AuthenticAMD", "25", "1", "1")),
        (SAPPHIRE_RAPIDS, 4, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (Sapphire Rapids, 4 cores, AMX)",
         "Sapphire Rapids", "fma,avx2,avx512f,avx512_bf16,avx512_fp16,amx_tile,amx_bf16,amx_int8",
         ("GenuineIntel", "6", "143", "8")),
        (NEOVERSE_V1, 64, "ARM Neoverse V1 (64 cores, SVE)", "Neoverse V1", "asimd,sve,bf16,i8mm",
         ("ARM", "0x41", "0xd40", "r1p1")),
    ],
)  # fmt: skip
def test_cpu_identity_from_real_cpuinfo(
    text: str, cores: int, label: str, microarchitecture: str, isa: str, identity: tuple[str, str, str, str]
) -> None:
    cpu = parse_cpuinfo(text)
    assert cpu_label(cpu, cores) == label
    fields = cpu.tag_fields()
    assert fields["cpu_microarchitecture"] == microarchitecture and fields["cpu_isa"] == isa
    assert (fields["cpu_vendor"], fields["cpu_family"], fields["cpu_model_number"], fields["cpu_stepping"]) == identity


def test_unknown_models_are_named_by_family_model_stepping() -> None:
    """Not in the table: the label carries CPUID family/model/stepping, so two unknown CPUs still differ."""
    unknown = parse_cpuinfo(ZEN4_BARE.replace("model\t\t: 17", "model\t\t: 240"))
    assert unknown.microarchitecture == ""
    assert cpu_label(unknown, 1) == "AMD EPYC (family 25 model 240 stepping 1, 1 core, AVX-512)"


@pytest.mark.parametrize(
    ("vendor", "family", "model", "stepping", "name"),
    [
        ("AuthenticAMD", 23, 49, "0", "Zen 2"),
        ("AuthenticAMD", 25, 1, "1", "Zen 3"),
        ("AuthenticAMD", 25, 17, "1", "Zen 4"),
        ("AuthenticAMD", 26, 2, "1", "Zen 5"),
        ("GenuineIntel", 6, 85, "4", "Skylake-SP"),
        ("GenuineIntel", 6, 85, "7", "Cascade Lake"),
        ("GenuineIntel", 6, 106, "6", "Ice Lake-SP"),
        ("GenuineIntel", 6, 143, "8", "Sapphire Rapids"),
        ("GenuineIntel", 6, 207, "2", "Emerald Rapids"),
        ("GenuineIntel", 6, 173, "1", "Granite Rapids"),
    ],
)
def test_microarchitecture_table(vendor: str, family: int, model: int, stepping: str, name: str) -> None:
    assert CpuInfo("x", vendor, family, model, stepping).microarchitecture == name


def test_cache_sizes_from_a_sysfs_tree(tmp_path: Path) -> None:
    """sysfs layout of cpu0/cache/indexN: level, type, size; instruction caches are left out."""
    for index, (level, kind, size) in enumerate(
        [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K"), ("3", "Unified", "32M")]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    assert cache_sizes_kib(tmp_path) == {1: 32, 2: 1024, 3: 32 * 1024}
    assert cache_sizes_kib(tmp_path / "missing") == {}


def test_cpu_fingerprint() -> None:
    facts = fingerprint("cpu")
    cpu = read_cpuinfo()
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or 0
    assert facts.device_type == "cpu" and facts.cpu_model == cpu.model_name
    assert facts.hardware == f"cpu:{cpu_label(cpu, cores)}" and len(facts.hardware) < 120
    assert int(facts.cpu_logical_cores) >= 1 and int(facts.torch_threads) == torch.get_num_threads()
    assert facts.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert facts.torch_version == torch.__version__ and facts.python_version == platform.python_version()
    assert facts.thop_version and facts.mlflow_version
    tags = facts.as_tags()
    assert tags["hardware"] == facts.hardware and all(isinstance(v, str) for v in tags.values())
    assert tags["cpu_microarchitecture"] == cpu.microarchitecture and tags["cpu_isa"] == cpu.isa


def test_hardware_tag_does_not_change_with_threads() -> None:
    """runtime.threads is a property of the run, not of the machine: one machine, one hardware tag."""
    with runtime_context(RuntimeOptions(threads=1)):
        one = fingerprint("cpu")
    with runtime_context(RuntimeOptions(threads=2)):
        two = fingerprint("cpu")
    assert one.hardware == two.hardware and " x1" not in one.hardware
    assert (one.torch_threads, two.torch_threads) == ("1", "2")
