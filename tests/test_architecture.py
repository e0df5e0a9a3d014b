"""The layering docs/architecture.md states: what each package may import, no import cycle, a light core, a leaf of
result types, every constant in one place, and every entry point named outside Python still there.

Every import counts: top-level, inside functions (lazy) and under ``if TYPE_CHECKING:``, found by walking the whole
syntax tree of each module. Only the check that the core loads no heavy library looks at import time alone.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "gflops_track"
# Each package's layer: a module imports only its own layer and the ones below (the picture in docs/architecture.md).
LAYERS = {
    "common": 0,
    "options": 1,
    "results": 2,
    "machine": 3,
    "counting": 3,
    "timing": 3,
    "models": 3,
    "peaks": 4,
    "pipeline": 5,
    "render": 5,
    "": 5,  # the package itself: the public API, loaded lazily from pipeline/, options/ and results/
    "tracking": 6,
    "compare": 7,
    "app": 8,
    "cli": 9,
    "__main__": 9,
}
CORE = {package for package, level in LAYERS.items() if level <= LAYERS["pipeline"]}
EXTERNAL_BANNED_IN_CORE = ("mlflow", "hydra", "omegaconf", "matplotlib")
LEAF = {"results": {"results", "options", "common"}, "options": {"options", "common"}, "common": {"common"}}
LIBRARIES = ("tracking", "compare")  # usable from Python without the command layer
COMMAND_LAYER = ("app", "cli")
PUBLIC_ROOT = {"__init__.py", "__main__.py"}
# Defined once, in the module that owns it; everyone else imports it.
DEFINED_ONCE = (
    "EXIT_OK", "EXIT_JOB_FAILED", "EXIT_CONFIG_ERROR", "PARENT_TAG", "ERROR_TAG", "OVERRIDES_TAG", "VARIANT_TAG",
    "TIMING_SUSPECT_TAG", "PARENT_RUN_ENV", "SWEPT_KEYS_ENV", "LEDGER_ENV", "DEFAULT_THRESHOLD", "MIN_SAMPLES",
    "DEFAULT_LOSS", "DEFAULT_OPTIMIZER", "ROOT_LABEL", "MIB",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """'gflops_track.results.timing' -> 'results'; the package itself -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported(node: ast.AST) -> set[str]:
    """The modules an import statement names: ``from a.b import c`` names ``a.b`` and ``a.b.c`` (c may be a module)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.module:
        assert node.level == 0, f"relative import of {node.module}: import by the full name"
        return {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return set()


def all_imports(tree: ast.Module) -> set[str]:
    """Every import of the module: top level, inside functions and classes, under ``if TYPE_CHECKING:``."""
    return {name for node in ast.walk(tree) for name in imported(node)}


def import_time_imports(tree: ast.Module) -> set[str]:
    """What importing the module runs: top-level statements only (``if TYPE_CHECKING:`` blocks never run)."""
    return {name for node in tree.body for name in imported(node)}


TREES = {module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
OURS = set(TREES)


def internal(imports: set[str]) -> set[str]:
    return {name for name in imports if name in OURS and name != "gflops_track"}


GRAPH = {module: internal(all_imports(tree)) - {module} for module, tree in TREES.items()}


def test_every_package_has_a_layer() -> None:
    assert {package_of(module) for module in OURS} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(OURS))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    mine = LAYERS[package_of(module)]
    upward = {name for name in GRAPH[module] if LAYERS[package_of(name)] > mine}
    assert not upward, f"{module} (layer {mine}) imports {sorted(upward)}"


@pytest.mark.parametrize("package", sorted(LEAF))
def test_the_leaves_import_no_engine(package: str) -> None:
    """results/ (what the steps produce) imports only options/ and common/; options/ only common/; common/ nothing of
    ours. The engines import the result types they fill, never the reverse."""
    outside = {
        f"{module} -> {name}"
        for module in OURS
        if package_of(module) == package
        for name in GRAPH[module]
        if package_of(name) not in LEAF[package]
    }
    assert not outside, sorted(outside)


@pytest.mark.parametrize("package", LIBRARIES)
def test_tracking_and_compare_import_nothing_of_the_command_layer(package: str) -> None:
    found = {
        f"{module} -> {name}"
        for module in OURS
        if package_of(module) == package
        for name in GRAPH[module]
        if package_of(name) in COMMAND_LAYER
    }
    assert not found, sorted(found)


@pytest.mark.parametrize("module", sorted(name for name in OURS if package_of(name) in CORE))
def test_core_modules_import_no_tracking_or_config_library(module: str) -> None:
    banned = {name for name in import_time_imports(TREES[module]) if name.split(".")[0] in EXTERNAL_BANNED_IN_CORE}
    assert not banned, f"core module {module} imports {sorted(banned)} at import time"


def _first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycle() -> None:
    """Between modules, counting lazy and TYPE_CHECKING imports."""
    cycle = _first_cycle(GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_no_cycle_between_packages() -> None:
    """The packages form the picture in docs/architecture.md: arrows one way only."""
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        packages.setdefault(package_of(module), set()).update(package_of(t) for t in targets)
    cycle = _first_cycle({package: targets - {package} for package, targets in packages.items()})
    assert cycle is None, f"packages import each other: {' -> '.join(cycle or [])}"


def test_the_picture_in_the_docs_matches_the_layers() -> None:
    """docs/architecture.md draws each package on its row; a package moved or added changes the picture too."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    picture = text.split("```", 2)[1]
    drawn: dict[str, int] = {}
    row = -1
    for line in picture.splitlines():
        if match := re.match(r"row (\d+)", line):
            row = int(match.group(1))
        for package in re.findall(r"(?:^|\s)(\w+)/(?=\s)", line):
            drawn.setdefault(package, row)
    expected = {package: level for package, level in LAYERS.items() if package not in ("", "__main__")}
    assert {package: drawn.get(package) for package in expected} == expected


def test_the_root_holds_the_public_api_only() -> None:
    assert {path.name for path in PACKAGE.glob("*.py")} == PUBLIC_ROOT


@pytest.mark.parametrize("init", sorted(PACKAGE.glob("*/**/__init__.py")), ids=lambda path: module_name(path))
def test_every_package_says_in_one_line_what_it_owns(init: Path) -> None:
    docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert docstring.strip() and "\n" not in docstring.strip(), f"{init}: a one-line docstring, please"


def _module_constants() -> dict[str, list[tuple[str, ast.expr]]]:
    """UPPER_CASE names assigned at module level -> [(module, value)]."""
    found: dict[str, list[tuple[str, ast.expr]]] = {}
    for module, tree in TREES.items():
        for node in tree.body:
            pairs: list[tuple[ast.expr, ast.expr]] = []
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        pairs += zip(target.elts, node.value.elts, strict=True)
                    else:
                        pairs.append((target, node.value))
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                pairs.append((node.target, node.value))
            for target, value in pairs:
                if isinstance(target, ast.Name) and target.id.isupper():
                    found.setdefault(target.id, []).append((module, value))
    return found


CONSTANTS = _module_constants()


@pytest.mark.parametrize("name", DEFINED_ONCE)
def test_listed_constants_are_defined_once(name: str) -> None:
    assert len(CONSTANTS.get(name, [])) == 1, f"{name} defined in {[module for module, _ in CONSTANTS.get(name, [])]}"


def test_no_constant_name_is_defined_in_two_modules() -> None:
    twice = {name: [module for module, _ in where] for name, where in CONSTANTS.items() if len(where) > 1}
    assert not twice, twice


def test_no_two_constants_hold_the_same_text() -> None:
    """A tag, an environment variable or a key written as a literal in two places drifts apart."""
    by_text: dict[str, list[str]] = {}
    for name, where in CONSTANTS.items():
        for module, value in where:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                by_text.setdefault(value.value, []).append(f"{module}.{name}")
    twice = {text: names for text, names in by_text.items() if len(names) > 1}
    assert not twice, twice


def test_the_environment_channels_live_in_one_module() -> None:
    """The sweep's cross-process channels are named (and so written and read) in one module only."""
    naming = {
        module
        for module, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("GFLOPS_TRACK_")
    }
    assert naming == {"gflops_track.app.channels"}


def _defaults(function: ast.FunctionDef) -> list[tuple[str, ast.expr]]:
    """(parameter, default) of every parameter that has a default."""
    positional = [*function.args.posonlyargs, *function.args.args]
    paired = zip(positional[len(positional) - len(function.args.defaults) :], function.args.defaults, strict=True)
    keyword = zip(function.args.kwonlyargs, function.args.kw_defaults, strict=True)
    return [(arg.arg, default) for arg, default in [*paired, *keyword] if default is not None]


def test_training_defaults_are_named_not_retyped() -> None:
    """``loss``/``optimizer`` parameters default to ``DEFAULT_LOSS``/``DEFAULT_OPTIMIZER``, never to a literal."""
    literal = [
        f"{module}.{node.name}({name}=...)"
        for module, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        for name, default in _defaults(node)
        if name in ("loss", "optimizer") and isinstance(default, ast.Constant)
    ]
    named = [
        node.name
        for tree in TREES.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        for name, default in _defaults(node)
        if name == "loss" and isinstance(default, ast.Name) and default.id == "DEFAULT_LOSS"
    ]
    assert not literal and named, (literal, named)


def _entry_points() -> list[str]:
    """Every dotted path named outside Python: console scripts, MLproject's ``python -m``, conf/'s ``_target_``s."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = [target.replace(":", ".") for target in project["project"]["scripts"].values()]
    found += re.findall(r"python -m ([\w.]+)", (ROOT / "MLproject").read_text())
    for path in (ROOT / "conf").rglob("*.yaml"):
        found += re.findall(r"_target_:\s*([\w.]+)", path.read_text())
    return sorted(set(found))


@pytest.mark.parametrize("target", _entry_points())
def test_every_entry_point_named_outside_python_exists(target: str) -> None:
    if importlib.util.find_spec(target.split(".")[0]) is None:
        pytest.skip(f"{target.split('.')[0]} is not installed")
    module, _, attribute = target.rpartition(".")
    try:
        spec = importlib.util.find_spec(target)
    except ModuleNotFoundError:
        spec = None
    if spec is None:  # not a module: an attribute of one
        assert hasattr(importlib.import_module(module), attribute), f"{target} does not exist"


def test_importing_the_package_loads_neither_mlflow_hydra_nor_matplotlib() -> None:
    """The exact check docs/architecture.md states, in a fresh interpreter."""
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
