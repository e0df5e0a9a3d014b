"""The layering README's "Architecture" states: what each package may import, no import cycle, a light core."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gflops_track"
LAYERS = {"__main__": 4, "cli": 4, "app": 3, "compare": 2, "tracking": 1}  # entry points on top; the rest: core, 0
EXTERNAL_BANNED_IN_CORE = ("mlflow", "hydra", "omegaconf", "matplotlib")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def import_time_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported: top-level statements only (imports inside functions are lazy,
    and ``if TYPE_CHECKING:`` blocks never run)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(path): import_time_imports(path) for path in PACKAGE.rglob("*.py")}
OURS = set(MODULES)


def internal(imports: set[str]) -> set[str]:
    return {name for name in imports if name in OURS and name != "gflops_track"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    upward = {name for name in internal(MODULES[module]) if layer(name) > layer(module)}
    assert not upward, f"{module} (layer {layer(module)}) imports {sorted(upward)}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if layer(name) == 0))
def test_core_modules_import_no_tracking_or_config_library(module: str) -> None:
    banned = {name for name in MODULES[module] if name.split(".")[0] in EXTERNAL_BANNED_IN_CORE}
    assert not banned, f"core module {module} imports {sorted(banned)} at import time"


def test_no_import_cycle() -> None:
    graph = {module: internal(imports) - {module} for module, imports in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_importing_the_package_loads_neither_mlflow_hydra_nor_matplotlib() -> None:
    """The exact check README's "Architecture" states, in a fresh interpreter."""
    code = "import gflops_track, sys; print([m for m in ('mlflow','hydra','matplotlib') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


DYNAMO_CHECK = r"""
import json, sys, torch
import gflops_track
from gflops_track.counting.counting_forward import _disable_dynamo_targets
from gflops_track.models import ResidualBlock

model, image = ResidualBlock(16, 16, norm_fn=sys.argv[1]), torch.randn(2, 16, 8, 8)
if sys.argv[2] == "dynamo-first":
    import torch._dynamo
first = gflops_track.profile(model, image, timing=False)
step = gflops_track.count_training_step(model, image, optimizer="none")  # torch.optim's step imports it itself
print(json.dumps({
    "dynamo": "torch._dynamo" in sys.modules,
    "flops": first.flops, "thop_macs": first.thop.macs, "torch_flops": first.torch_count.flops,
    "step_flops": step.flops, "targets": len(_disable_dynamo_targets()),
    # our marker: the function itself in the slot where torch caches the dynamo-disabled one
    "marked": sum(getattr(t, "__dynamo_disable", None) is t for t in _disable_dynamo_targets()),
}))
"""


@pytest.mark.parametrize("norm_fn", ["group", "batch"])
def test_counting_never_imports_torch_dynamo_and_leaves_torch_as_it_was(norm_fn: str) -> None:
    """torch's meta kernels and every dispatch mode sit behind torch._disable_dynamo, whose first call imports
    torch._dynamo (seconds). Counting (ours, thop, FlopCounterMode, a training step's forward and backward) must not
    pay that when nothing is compiled, must leave no marker behind, and must count the same when torch._dynamo is
    already loaded. (A torch.optim optimizer's step imports torch._dynamo itself.)"""
    results = {}
    for when in ("never", "dynamo-first"):
        done = subprocess.run(
            [sys.executable, "-c", DYNAMO_CHECK, norm_fn, when], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results[when] = json.loads(done.stdout.strip().splitlines()[-1])
    quiet, loaded = results["never"], results["dynamo-first"]
    assert quiet["dynamo"] is False and loaded["dynamo"] is True
    assert quiet["targets"] > 0 and quiet["marked"] == 0 and loaded["marked"] == 0
    counts = ("flops", "thop_macs", "torch_flops", "step_flops")
    assert {key: quiet[key] for key in counts} == {key: loaded[key] for key in counts}
