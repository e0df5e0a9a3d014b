"""Preflight and the in-process launcher compose a sweep's defaults list once per distinct set of the overrides that
shape it, and apply each job's other overrides to a copy with Hydra's own rule (gflops_track.app.composition). The
result must be, job for job, the config Hydra composes from the whole command line, hydra node included for the
launcher (this guards a Hydra upgrade too), and a bad value must be named as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.utils import detect_calling_file_or_module_from_task_function
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conftest import run_cli
from gflops_track.app import preflight as preflight_module
from gflops_track.app.composition import SharedDefaultsLoader
from gflops_track.app.preflight import _cause_line, _check_jobs
from gflops_track.app.schema import AppConfig, ConfigError, register_schema, to_app_config
from gflops_track.cli.run import CONFIG_DIR, hydra_app

SWEEPS = [
    ["norm_fn=group,batch,instance", "batch.size=1,2"],
    ["device=cpu,auto", "precision=fp32,bf16", "++timing.enabled=false", "timing.max_time_s=3,4"],
    ["model=custom", "model._target_=torch.nn.Linear", "+model.in_features=8", "+model.out_features=4",
     "input.shape=[8]", "batch.size=1,4"],
    ["device=cpu,auto", "device.index=null", "~model.init", "++norm_fn=batch", "batch.size=1,2"],  # a swept group's key
    ["model={planes:64,in_planes:64},{planes:32,in_planes:32}", "batch.size=1,2"],  # dicts Hydra merges into the group
    ['device="cpu",auto', "precision='fp32',bf16", "batch.size=1,2"],  # quoted choices of a group
]  # fmt: skip
# one job each, refused: Hydra's own composition error, the schema's, an unknown key, a value out of range
REFUSED = [
    ["~timing.max_time_s"],
    ["+timing.enabled=false"],
    ["timing.max_time_s=abc"],
    ["batch.sise=2"],
    ["batch.size=0"],
]


def _hydras(overrides: list[str], config_dir: str = CONFIG_DIR, config_name: str = "config") -> list[AppConfig]:
    """Every job of the sweep, each composed whole by Hydra."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()  # glob(...) sweeps read the groups' options
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
            jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
            return [to_app_config(compose(config_name, overrides=job)) for job in jobs]
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("overrides", SWEEPS, ids=[" ".join(s) for s in SWEEPS])
def test_each_job_is_the_config_hydra_composes(overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _hydras(overrides)
    composed: list[list[str]] = []
    real = preflight_module.compose

    def counted(config_name: str, overrides: list[str]) -> object:  # the real compose, counted
        composed.append(list(overrides))
        return real(config_name, overrides=overrides)

    monkeypatch.setattr(preflight_module, "compose", counted)
    errors, configs = _check_jobs((overrides, {}), CONFIG_DIR, "config")
    assert errors == []
    assert configs == expected
    assert len(configs) > 1
    # the value overrides alone never compose again: one composition per distinct choice of config groups
    assert len(composed) == len({tuple(shaping) for shaping in composed})
    groups = {"model", "device", "precision", "batch"}
    assert all(o.split("=")[0] in groups for shaping in composed for o in shaping), composed


@pytest.mark.parametrize("overrides", REFUSED, ids=[" ".join(r) for r in REFUSED])
def test_a_refused_job_is_named_as_when_hydra_composes_it_whole(overrides: list[str]) -> None:
    try:
        _hydras(overrides)
    except ConfigError as error:
        expected = error.errors
    except (HydraException, OmegaConfBaseException) as error:
        expected = [_cause_line(error)]
    else:
        raise AssertionError(f"{overrides} composes")
    assert _check_jobs((overrides, {}), CONFIG_DIR, "config") == (expected, [])


def test_a_bad_value_in_one_job_of_a_sweep_refuses_only_that_value() -> None:
    errors, configs = _check_jobs((["norm_fn=group,batch", "batch.size=2,0"], {}), CONFIG_DIR, "config")
    assert [(c.norm_fn, c.batch.size) for c in configs] == [("group", 2), ("batch", 2)]
    assert len(errors) == 1 and "batch.size" in errors[0], errors


@pytest.mark.parametrize("overrides", SWEEPS, ids=[" ".join(s) for s in SWEEPS])
def test_the_launcher_gets_each_job_as_hydra_composes_it(overrides: list[str], tmp_path: Path) -> None:
    """What the sweep's in-process launcher runs: each job's config, hydra node and all (its task overrides, its
    override_dirname, which names the job's run, the choices), equal to Hydra's own load_sweep_config, key for key,
    from one composition per choice of config groups."""
    jobs, shared, launched = _launch(CONFIG_DIR, "config", [f"hydra.sweep.dir={tmp_path}"], overrides)
    assert all(config.hydra.job.override_dirname != "" for config in launched)
    choices = {tuple(o for o in job if o.split("=")[0] in {"model", "device", "precision"}) for job in jobs}
    assert len(shared.bases) == len(choices) < len(jobs)


def _launch(
    config_dir: str, primary: str, hydra_overrides: list[str], overrides: list[str]
) -> tuple[list[list[str]], SharedDefaultsLoader, list[DictConfig]]:
    """Each job of the sweep as the in-process launcher loads it, asserted equal, key for key, to Hydra's own
    ``load_sweep_config`` of the job; the jobs' overrides, the launcher's loader and the configs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            master = hydra.compose_config(
                primary, [*hydra_overrides, *overrides], RunMode.MULTIRUN, with_log_configuration=False
            )
            parsed = OverridesParser.create().parse_overrides(overrides)
            jobs = [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
            shared = SharedDefaultsLoader(hydra.config_loader)
            launched = []
            for job in jobs:
                expected = hydra.config_loader.load_sweep_config(master, job)
                launched.append(shared.load_sweep_config(master, job))
                assert OmegaConf.to_container(launched[-1]) == OmegaConf.to_container(expected), job
            return jobs, shared, launched
    finally:
        GlobalHydra.instance().clear()


# A group found only through the primary config's hydra.searchpath (a config of one's own, -cd/-cn), appended with
# +extra=fast: the groups are asked for with that searchpath, so each choice of it is one composition
SEARCHED = ["+extra=fast,slow", "norm_fn=group,batch"]


@pytest.fixture
def searched_config_dir(tmp_path: Path) -> str:
    """Our conf/ with a primary config ``searched`` whose hydra.searchpath holds a group ``extra`` (options ``fast``
    and ``slow``, each setting batch.size at the root), a group ``timing`` (``quick``) named like a key, and one more
    option of our group ``model`` (``mine``, the residual block's config)."""
    config_dir = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, config_dir)
    searched = tmp_path / "searched"
    mine = (Path(CONFIG_DIR) / "model" / "residual_block.yaml").read_text()
    for group, name, body in [("extra", "fast", "batch:\n  size: 3\n"), ("extra", "slow", "batch:\n  size: 5\n"),
                              ("timing", "quick", "max_time_s: 3\n"), ("model", "mine", mine)]:  # fmt: skip
        (searched / group).mkdir(parents=True, exist_ok=True)
        package = "# @package _global_\n" if group == "extra" else ""
        (searched / group / f"{name}.yaml").write_text(package + body)
    primary = (
        (config_dir / "config.yaml").read_text().replace("\nhydra:\n", f"\nhydra:\n  searchpath: [file://{searched}]\n")
    )
    (config_dir / "searched.yaml").write_text(primary)
    return str(config_dir)


def test_a_group_on_the_primary_configs_searchpath_is_composed_as_hydra_composes_it(searched_config_dir: str) -> None:
    expected = _hydras(SEARCHED, searched_config_dir, "searched")
    assert [c.batch.size for c in expected] == [3, 3, 5, 5]
    assert _check_jobs((SEARCHED, {}), searched_config_dir, "searched") == ([], expected)
    try:
        _hydras(["timing=quick"], searched_config_dir, "searched")
    except (HydraException, OmegaConfBaseException) as error:
        refused = [_cause_line(error)]
    else:
        raise AssertionError("timing=quick composes")
    assert _check_jobs((["timing=quick"], {}), searched_config_dir, "searched") == (refused, [])


@pytest.mark.parametrize("primary", ["searched", "config"])
def test_the_launcher_composes_a_group_on_a_searchpath_as_hydra_does(
    primary: str, searched_config_dir: str, tmp_path: Path
) -> None:
    """The searchpath in the primary config, or given as hydra.searchpath on the command line."""
    searchpath = [] if primary == "searched" else [f"hydra.searchpath=[file://{tmp_path / 'searched'}]"]
    _, shared, launched = _launch(searched_config_dir, primary, [f"hydra.sweep.dir={tmp_path}", *searchpath], SEARCHED)
    assert sorted(shared.bases) == [("+extra=fast",), ("+extra=slow",)]  # a group: one composition per choice
    assert [(c.batch.size, c.hydra.runtime.choices.extra) for c in launched] == [
        (3, "fast"), (3, "fast"), (5, "slow"), (5, "slow")
    ]  # fmt: skip


def test_a_glob_sweep_over_a_group_is_the_jobs_hydra_expands() -> None:
    """glob(...) reads the group's options: preflight's parser has Hydra's config loader, as Hydra's has."""
    overrides = ["precision=glob([fp32,bf16])", "batch.size=1,2"]
    expected = _hydras(overrides)
    assert sorted({c.precision.dtype for c in expected}) == ["bf16", "fp32"] and len(expected) == 4
    assert _check_jobs((overrides, {}), CONFIG_DIR, "config") == ([], expected)


def test_only_hydra_and_its_dotted_and_slashed_keys_are_left_to_hydra() -> None:
    """hydra.job.chdir=true is Hydra's; hydrafoo=1 is ours, and unknown: refused before any run, not by the job."""
    errors, configs = _check_jobs((["hydra.job.chdir=true", "norm_fn=batch"], {}), CONFIG_DIR, "config")
    assert errors == [] and [c.norm_fn for c in configs] == ["batch"]
    for override in ("hydrafoo=1", "+hydrafoo=1"):
        errors, configs = _check_jobs(([override], {}), CONFIG_DIR, "config")
        assert configs == [] and len(errors) == 1 and errors[0].startswith("hydrafoo is not a known key"), errors


def test_a_searchpath_on_the_command_line_and_in_the_primary_config_adds_groups(
    searched_config_dir: str, tmp_path: Path
) -> None:
    """hydra.searchpath=[...] on the command line adds groups as Hydra adds them (batch.size 3 and 5 from +extra);
    with -cn of a primary config whose searchpath adds an option to a group of ours (model=mine), the choice is not
    refused as unknown: Hydra composes it."""
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'searched'}]"
    errors, configs = _check_jobs(([searchpath, *SEARCHED], {}), CONFIG_DIR, "config")
    assert errors == [] and [c.batch.size for c in configs] == [3, 3, 5, 5]
    expected = _hydras(["model=mine"], searched_config_dir, "searched")
    assert _check_jobs((["model=mine"], {"config_name": "searched"}), searched_config_dir, "config") == ([], expected)
    errors, _ = _check_jobs((["model=nope"], {}), CONFIG_DIR, "config")
    assert errors == ["model='nope' is not allowed: choose one of custom, hf, residual_block, timm, torchvision"]


def test_config_dir_adds_a_directory_in_front_of_ours(tmp_path: Path) -> None:
    """-cd DIR adds DIR to the search path in front of our conf/ (Hydra's run_hydra), it does not replace it: a group
    of its own and our groups' options are both there."""
    extra = tmp_path / "extra_conf" / "extra"
    extra.mkdir(parents=True)
    (extra / "fast.yaml").write_text("# @package _global_\nbatch:\n  size: 3\n")
    errors, configs = _check_jobs(
        (["+extra=fast", "precision=bf16", "model=custom", "model._target_=torch.nn.Identity", "input.shape=[4]"],
         {"config_dir": str(tmp_path / "extra_conf")}), CONFIG_DIR, "config",
    )  # fmt: skip
    assert errors == [] and [(c.batch.size, c.precision.dtype) for c in configs] == [(3, "bf16")]


@pytest.fixture
def key_group_config_dir(tmp_path: Path) -> str:
    """Our conf/ with a primary config ``keyed`` that picks ``norm_fn: gn`` from a group ``norm_fn`` found only on
    its hydra.searchpath, a group named like a key of ours; its options ``gn`` and ``bn`` set norm_fn and batch.size
    at the root (``group``, 3 and ``batch``, 5)."""
    config_dir = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, config_dir)
    group = tmp_path / "keyed" / "norm_fn"
    group.mkdir(parents=True)
    for name, norm, size in [("gn", "group", 3), ("bn", "batch", 5)]:
        (group / f"{name}.yaml").write_text(f"# @package _global_\nnorm_fn: {norm}\nbatch:\n  size: {size}\n")
    primary = (config_dir / "config.yaml").read_text()
    primary = primary.replace("  - _self_\n", "  - norm_fn: gn\n  - _self_\n")
    primary = primary.replace("\nhydra:\n", f"\nhydra:\n  searchpath: [file://{tmp_path / 'keyed'}]\n")
    (config_dir / "keyed.yaml").write_text(primary)
    return str(config_dir)


def test_a_searchpath_group_named_like_a_key_is_chosen_as_hydra_chooses_it(
    key_group_config_dir: str, tmp_path: Path
) -> None:
    """``norm_fn=gn,bn`` under the primary config ``keyed``: Hydra reads norm_fn as the group its searchpath holds
    (its defaults list picks it), not as the value "gn": preflight and the launcher ask the loader for the groups
    with the primary config's searchpath, so they compose (group, 3) and (batch, 5) as Hydra does."""
    sweep = ["norm_fn=gn,bn"]
    expected = _hydras(sweep, key_group_config_dir, "keyed")
    assert [(c.norm_fn, c.batch.size) for c in expected] == [("group", 3), ("batch", 5)]
    assert _check_jobs((sweep, {}), key_group_config_dir, "keyed") == ([], expected)
    _, shared, launched = _launch(key_group_config_dir, "keyed", [f"hydra.sweep.dir={tmp_path}"], sweep)
    assert [c.hydra.runtime.choices.norm_fn for c in launched] == ["gn", "bn"] and shared.is_group["norm_fn"]
    errors, _ = _check_jobs((["norm_fn=nope"], {}), key_group_config_dir, "keyed")
    assert errors == ["norm_fn='nope' is not allowed: choose one of bn, gn"]


def test_a_config_file_that_is_not_yaml_is_named_before_any_run(tmp_path: Path) -> None:
    """A primary config or a group's option with a YAML syntax error printed PyYAML's traceback; preflight now names
    the file, its line and column (1-based, as an editor counts) and the problem, and the command exits 2 with no
    MLflow run created. The other job of the sweep is not refused for it."""
    config_dir = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, config_dir)
    (config_dir / "broken.yaml").write_text("defaults:\n  - gflops_track_schema\n  foo: [\n")
    (config_dir / "model" / "broken.yaml").write_text("name: [\n")
    errors, configs = _check_jobs((["norm_fn=batch"], {}), str(config_dir), "broken")
    assert configs == [] and errors == [
        f"{config_dir / 'broken.yaml'}, line 3, column 3 is not valid YAML: expected <block end>, but found '?'; "
        "fix the file (or name another config)"
    ]
    errors, configs = _check_jobs((["model=broken,residual_block"], {}), str(config_dir), "config")
    assert len(configs) == 1 and errors == [
        f"{config_dir / 'model' / 'broken.yaml'}, line 2, column 1 is not valid YAML: expected the node content, but "
        "found '<stream end>'; fix the file (or name another config)"
    ]
    store = tmp_path / "mlflow.db"
    done = run_cli(
        ["--config-path", str(config_dir), "--config-name", "broken", "timing.enabled=false",
         f"tracking.uri=sqlite:///{store}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "broken.yaml, line 3, column 3 is not valid YAML" in done.stderr and "Traceback" not in done.stderr
    assert "No MLflow run was created." in done.stderr and not store.exists()


def test_other_config_file_faults_are_named_in_one_line(tmp_path: Path) -> None:
    """A control character (PyYAML's ReaderError has no line mark: its file and character position), a file that is
    not UTF-8 (no file name in the error: the job's choice that reads it), and a YAML list where a mapping belongs
    (Hydra's first line ends in "raised while composing config:", the reason is on its next line)."""
    config_dir = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, config_dir)
    (config_dir / "model" / "ctrl.yaml").write_bytes(b"name: a\x07b\n")
    (config_dir / "model" / "latin.yaml").write_bytes(b"name: \xff\n")
    (config_dir / "model" / "listy.yaml").write_text("- a\n")
    assert _check_jobs((["model=ctrl"], {}), str(config_dir), "config")[0] == [
        f"{config_dir / 'model' / 'ctrl.yaml'}, character 8 is not valid YAML: unacceptable character #x0007: special "
        "characters are not allowed; fix the file (or name another config)"
    ]
    assert _check_jobs((["model=latin,residual_block"], {}), str(config_dir), "config")[0] == [
        "a config file that model=latin reads is not UTF-8 text ('utf-8' codec can't decode byte 0xff in position 6: "
        "invalid start byte); save it as UTF-8"
    ]
    assert _check_jobs((["model=listy"], {}), str(config_dir), "config")[0] == [
        "In 'model/listy': ValidationError raised while composing config: Invalid type assigned: list is not a "
        "subclass of Dict[str, Any]. value: ['a']"
    ]


def test_a_directory_on_the_searchpath_is_a_group_as_for_hydra(tmp_path: Path) -> None:
    """``norm_fn/`` holding only a subfolder is a config group for Hydra (any directory is), which then refuses
    ``norm_fn=batch`` as a choice missing from the defaults list; preflight refused nothing and the job ran with
    norm_fn batch. Now both say Hydra's words."""
    (tmp_path / "searched" / "norm_fn" / "sub").mkdir(parents=True)
    (tmp_path / "searched" / "norm_fn" / "sub" / "x.yaml").write_text("a: 1\n")
    overrides = [f"hydra.searchpath=[file://{tmp_path / 'searched'}]", "norm_fn=batch"]
    with pytest.raises((HydraException, OmegaConfBaseException)) as hydras:
        _hydras(overrides)
    assert _check_jobs((overrides, {}), CONFIG_DIR, "config") == ([_cause_line(hydras.value)], [])
    assert "No match in the defaults list" in _cause_line(hydras.value)


def test_config_path_is_read_as_hydra_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--config-path pkg://mypkg.conf`` (configs shipped in one's own package) is composed from that package, as
    Hydra composes it (preflight read it as a directory below gflops_track/app/ and refused it); a relative path is
    below the package that declares the app, ``pkg://gflops_track.cli/<path>``, also as Hydra reads it: where
    nothing is there, the error says so and names the absolute path the user likely meant."""
    assert detect_calling_file_or_module_from_task_function(hydra_app) == (None, preflight_module.HYDRA_APP_MODULE)
    package = tmp_path / "mypkg"
    shutil.copytree(CONFIG_DIR, package / "conf")
    for folder in (package, package / "conf"):
        (folder / "__init__.py").write_text("")
    (package / "conf" / "batch" / "default.yaml").write_text("size: 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    flags = {"config_path": "pkg://mypkg.conf"}
    errors, configs = _check_jobs((["norm_fn=batch"], flags), CONFIG_DIR, "config")
    assert errors == [] and configs == _hydras(["norm_fn=batch"], str(package / "conf")) and configs[0].batch.size == 7
    errors, _ = _check_jobs((["norm_fn=foo"], flags), CONFIG_DIR, "config")
    assert errors == ["norm_fn='foo' is not allowed: choose one of batch, group, instance, none"]
    monkeypatch.chdir(tmp_path)
    errors, _ = _check_jobs((["norm_fn=batch"], {"config_path": "no_such_conf"}), CONFIG_DIR, "config")
    assert errors == [
        "Primary config module 'gflops_track.cli.no_such_conf' not found; Hydra reads a relative --config-path as a "
        "package path below the app (pkg://gflops_track.cli/no_such_conf), not from the current directory: give "
        f"--config-path {tmp_path / 'no_such_conf'}"
    ]
