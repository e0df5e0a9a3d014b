"""How the module runs while it is measured (``RuntimeOptions``): dtype, memory format, threads, torch.compile.

"precision" here and in ``conf/precision/`` means the *dtype* (fp32, tf32, fp16, bf16); the *statistical* precision of
a timing is ``TimingOptions.target_precision``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
DTYPE_NAMES: dict[torch.dtype, str] = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPE_MODES = ("autocast", "convert")
MEMORY_FORMATS = ("contiguous", "channels_last")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# torch.set_num_threads takes any int, then its OpenMP pool crashes the process (segfault, or libgomp's "Thread
# creation failed") when the threads cannot be made: 30,000 on a 2-core VM. No machine has more cores than this.
MAX_THREADS = 1024


@dataclass(frozen=True)
class RuntimeOptions:
    """``dtype``: fp32 (strict IEEE fp32: TF32 off), tf32 (TF32 tensor cores allowed), fp16, bf16 — the latter two
    through ``autocast`` or by converting module and inputs (``convert``)."""

    dtype: str = "fp32"
    dtype_mode: str = "autocast"
    memory_format: str = "contiguous"
    cudnn_benchmark: bool = False
    threads: int | None = None
    compile: str = "off"

    def __post_init__(self) -> None:
        """A torch dtype names itself (``dtype=torch.bfloat16`` is ``"bf16"``)."""
        if isinstance(self.dtype, torch.dtype) and self.dtype in DTYPE_NAMES:
            object.__setattr__(self, "dtype", DTYPE_NAMES[self.dtype])

    @classmethod
    def of_model(cls, model: torch.nn.Module) -> RuntimeOptions:
        """The options a model runs under when none are given: fp32, or the half dtype every floating parameter of
        an already converted model has (``model.to(torch.bfloat16)``: ``bf16``, ``convert``), so its peaks,
        utilization and label are the bf16 ones, not fp32's."""
        dtypes = {parameter.dtype for parameter in model.parameters() if parameter.is_floating_point()}
        (only,) = dtypes if len(dtypes) == 1 else (None,)
        if only in (torch.float16, torch.bfloat16):
            return cls(dtype=DTYPE_NAMES[only], dtype_mode="convert")
        return cls()

    def problems(self) -> list[tuple[str, str]]:
        """(field, "=value is not allowed: ...") per invalid option; callers prefix the key they expose."""
        allowed = {
            "dtype": tuple(DTYPES),
            "dtype_mode": DTYPE_MODES,
            "memory_format": MEMORY_FORMATS,
            "compile": COMPILE_MODES,
        }
        found = [
            (name, f"={getattr(self, name)!r} is not allowed: choose one of {', '.join(choices)}")
            for name, choices in allowed.items()
            if getattr(self, name) not in choices
        ]
        if self.threads is not None and (isinstance(self.threads, bool) or not 1 <= self.threads <= MAX_THREADS):
            found.append((
                "threads",
                f"={self.threads!r} is not allowed: it must be null (torch's default) or an integer from 1 to "
                f"{MAX_THREADS}",
            ))  # fmt: skip
        return found

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def converts(self) -> bool:
        return self.dtype in ("fp16", "bf16") and self.dtype_mode == "convert"

    @property
    def autocasts(self) -> bool:
        return self.dtype in ("fp16", "bf16") and self.dtype_mode == "autocast"
