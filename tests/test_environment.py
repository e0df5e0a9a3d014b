"""The resolved environment of a run: installed packages, the `env_hash` tag, the `environment.txt` artifact and
compare's note when two runs differ in environment."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gflops_track.machine.environment import (
    ENVIRONMENT_ARTIFACT,
    ENVIRONMENTS_FOLDER,
    _interpreter_packages,
    environment_files,
    environment_hash,
    environment_note,
    environment_tags,
    installed_packages,
    package_differences,
    parse_environment_txt,
)


def dist_info(root: Path, name: str, version: str) -> importlib.metadata.PathDistribution:
    """A real installed-distribution record (a .dist-info folder with METADATA), as pip writes it."""
    folder = root / f"{name}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return importlib.metadata.PathDistribution(folder)


def test_installed_packages_reads_this_interpreter() -> None:
    packages = installed_packages()
    assert packages["torch"] == torch.__version__
    assert packages["pytest"] == importlib.metadata.version("pytest")
    assert list(packages) == sorted(packages)


def test_installed_packages_canonical_names_and_first_on_path_wins(tmp_path: Path) -> None:
    first = [dist_info(tmp_path / "a", "PyYAML", "6.0.2"), dist_info(tmp_path / "a", "typing_extensions", "4.12.0")]
    shadowed = dist_info(tmp_path / "b", "pyyaml", "5.1")  # later on sys.path: `import yaml` never sees it
    assert installed_packages([*first, shadowed]) == {"pyyaml": "6.0.2", "typing-extensions": "4.12.0"}


def test_installed_packages_sees_an_install_and_a_removal(tmp_path: Path, monkeypatch: Any) -> None:
    """The list is kept between calls (reading every METADATA file is slow), but never outlives an install, upgrade
    or removal: pip adds, renames (name-version) and removes .dist-info folders."""
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "gflops-probe-dist" not in installed_packages()
    dist_info(tmp_path, "gflops_probe_dist", "1.0")
    assert installed_packages()["gflops-probe-dist"] == "1.0"
    shutil.rmtree(tmp_path / "gflops_probe_dist-1.0.dist-info")
    dist_info(tmp_path, "gflops_probe_dist", "2.0")
    assert installed_packages()["gflops-probe-dist"] == "2.0"
    shutil.rmtree(tmp_path / "gflops_probe_dist-2.0.dist-info")
    assert "gflops-probe-dist" not in installed_packages()


def test_the_list_is_kept_in_the_user_cache_for_the_next_command(tmp_path: Path, monkeypatch: Any) -> None:
    """The next command (here: the process's own list forgotten) reads the list the last one saved for the same
    installed state, not every METADATA file again; an install gives a new state, read from the files."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    dist_info(tmp_path / "site", "gflops_probe_dist", "1.0")
    _interpreter_packages.cache_clear()
    assert installed_packages()["gflops-probe-dist"] == "1.0"
    [saved] = (tmp_path / "cache" / "gflops-track" / ENVIRONMENTS_FOLDER).glob("*.json")
    content = json.loads(saved.read_text())
    content["packages"] = [[name, "7.7" if name == "gflops-probe-dist" else v] for name, v in content["packages"]]
    saved.write_text(json.dumps(content))  # what only a read of the cache can return
    _interpreter_packages.cache_clear()
    assert installed_packages()["gflops-probe-dist"] == "7.7"
    dist_info(tmp_path / "site", "gflops_other_dist", "3.0")  # an install: a new state, the files are read again
    _interpreter_packages.cache_clear()
    packages = installed_packages()
    assert (packages["gflops-probe-dist"], packages["gflops-other-dist"]) == ("1.0", "3.0")
    _interpreter_packages.cache_clear()


def test_an_egg_info_rewritten_in_place_is_read_again(tmp_path: Path, monkeypatch: Any) -> None:
    """`setup.py develop` rewrites `name.egg-info/PKG-INFO` without renaming the folder: its write time is part of
    the state, so a cached list never outlives it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path))
    egg = tmp_path / "gflops_probe_egg.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: gflops-probe-egg\nVersion: 1.0\n")
    _interpreter_packages.cache_clear()
    assert installed_packages()["gflops-probe-egg"] == "1.0"
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: gflops-probe-egg\nVersion: 2.0\n")
    written = (egg / "PKG-INFO").stat().st_mtime_ns + 10**9  # a clock too coarse to tell the writes apart
    os.utime(egg / "PKG-INFO", ns=(written, written))
    _interpreter_packages.cache_clear()
    assert installed_packages()["gflops-probe-egg"] == "2.0"
    _interpreter_packages.cache_clear()


@pytest.mark.parametrize("cache", ["unwritable", "corrupt"])
def test_a_cache_that_cannot_be_used_only_costs_a_read(cache: str, tmp_path: Path, monkeypatch: Any) -> None:
    if cache == "unwritable":
        (tmp_path / "cache").write_text("a file where the cache folder goes")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    dist_info(tmp_path / "site", "gflops_probe_dist", "1.0")
    _interpreter_packages.cache_clear()
    if cache == "corrupt":
        installed_packages()
        [saved] = (tmp_path / "cache" / "gflops-track" / ENVIRONMENTS_FOLDER).glob("*.json")
        saved.write_text('{"path_state": 1}')
        _interpreter_packages.cache_clear()
    assert installed_packages()["gflops-probe-dist"] == "1.0"
    if cache == "corrupt":  # rewritten whole
        assert json.loads(saved.read_text())["packages"]
    _interpreter_packages.cache_clear()


def test_a_vendored_folder_on_sys_path_is_no_install_location(tmp_path: Path, monkeypatch: Any) -> None:
    """A sys.path folder inside a package (setuptools' `_vendor`, put there when something imports setuptools) holds
    that package's private copies: they are not installed distributions."""
    site = tmp_path / "site-packages"
    dist_info(site, "gflops_probe_top", "1.0")
    dist_info(site / "tool" / "_vendor", "gflops_probe_vendored", "2.0")
    (site / "tool" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site / "tool" / "_vendor"))
    monkeypatch.syspath_prepend(str(site))
    packages = installed_packages()
    assert packages["gflops-probe-top"] == "1.0" and "gflops-probe-vendored" not in packages


def test_env_hash_is_the_same_before_and_after_thop_is_imported() -> None:
    """thop imports distutils, i.e. setuptools, which puts `setuptools/_vendor` on sys.path: the first job of a sweep
    (hashed before thop ran) and the others used to get different `env_hash` tags in one process."""
    code = (
        "import json; from gflops_track.machine.environment import installed_packages as p; before = p(); import thop; "
        "print(json.dumps([before, p()]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == after and before["torch"] == torch.__version__


def test_environment_hash_is_sha256_of_sorted_lines() -> None:
    packages = {"torch": "2.13.0", "MLflow": "3.17.2", "numpy": "2.1.0"}
    expected = hashlib.sha256(b"mlflow==3.17.2\nnumpy==2.1.0\ntorch==2.13.0\n").hexdigest()[:12]
    assert environment_hash(packages) == expected
    assert environment_hash(dict(reversed(packages.items()))) == expected  # order does not matter
    assert environment_hash({**packages, "numpy": "2.1.1"}) != expected  # one version more or less does
    assert environment_hash({**packages, "six": "1.16.0"}) != expected


def test_environment_txt_round_trips_and_carries_its_hash() -> None:
    packages = installed_packages()
    files = environment_files(packages)
    assert list(files) == [ENVIRONMENT_ARTIFACT]
    text = files[ENVIRONMENT_ARTIFACT].decode()
    assert text.startswith(f"# env_hash {environment_hash(packages)}")
    assert f"torch=={torch.__version__}\n" in text
    assert parse_environment_txt(text) == packages
    assert environment_hash(parse_environment_txt(text)) == environment_hash(packages)


def test_environment_tags_fit_mlflow_and_name_the_packages() -> None:
    tags = environment_tags({"torch": "2.13.0", "numpy": "2.1.0"})
    assert tags["env_hash"] == environment_hash({"torch": "2.13.0", "numpy": "2.1.0"})
    assert json.loads(tags["env_packages"]) == {"numpy": "2.1.0", "torch": "2.13.0"}
    huge = {f"package-{i:05d}": "1.0.0" for i in range(1000)}  # ~25 characters each: over MLflow's 8,000 limit
    assert set(environment_tags(huge)) == {"env_hash"}
    real = environment_tags()
    assert len(real["env_hash"]) == 12 and all(len(value) <= 8000 for value in real.values())


def test_package_differences() -> None:
    a = {"torch": "2.13.0", "numpy": "2.1.0", "six": "1.16.0"}
    b = {"torch": "2.14.1", "NumPy": "2.1.0", "rich": "14.0.0"}
    assert package_differences(a, b) == ["+rich 14.0.0", "-six 1.16.0", "torch 2.13.0 -> 2.14.1"]
    assert package_differences(a, a) == []


def test_environment_note() -> None:
    old = environment_tags({"torch": "2.13.0", "numpy": "2.1.0"})
    new = environment_tags({"torch": "2.14.1", "numpy": "2.1.0"})
    assert environment_note(old, dict(old)) is None  # same environment: nothing to say
    assert environment_note(old, {}) is None  # a run from before env_hash existed: nothing to compare
    note = environment_note(old, new, names=("baseline", "candidate"))
    assert note == (
        f"environments differ: baseline env_hash={old['env_hash']}, candidate env_hash={new['env_hash']}"
        " (torch 2.13.0 -> 2.14.1)"
    )
    bare = environment_note({"env_hash": "aaa"}, {"env_hash": "bbb"})
    assert bare == "environments differ: a env_hash=aaa, b env_hash=bbb"  # no list known: the hashes only
    many_a = {f"p{i}": "1" for i in range(8)}
    many_b = {f"p{i}": "2" for i in range(8)}
    listed = environment_note({"env_hash": "x"}, {"env_hash": "y"}, packages=(many_a, many_b), max_listed=5)
    assert listed is not None and listed.endswith("p4 1 -> 2 and 3 more)")
    assert "\n" not in listed


def test_core_module_imports_no_mlflow_or_hydra() -> None:
    import subprocess

    code = "import sys, gflops_track.machine.environment; print(sorted({'mlflow', 'hydra'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
