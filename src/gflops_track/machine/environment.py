"""The resolved Python environment of a run: every installed distribution and its version, a short hash of that list
(the `env_hash` tag), the list itself as an artifact (`environment.txt`), and the note `compare` prints when two runs
it puts side by side were measured in different environments. Core: imports neither MLflow nor Hydra."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gflops_track.common.names import user_cache_dir

ENV_HASH_TAG = "env_hash"
ENV_PACKAGES_TAG = "env_packages"  # optional: the name==version list as compact JSON, so compare can name differences
ENVIRONMENT_ARTIFACT = "environment.txt"
METADATA_SUFFIXES = (".dist-info", ".egg-info")  # the entries importlib.metadata reads distributions from
ENVIRONMENTS_FOLDER = "environments"  # under the user cache: one file per installed state read, {key}.json
ENVIRONMENTS_KEPT = 8  # the newest states kept there (a few kB each)
HASH_LENGTH = 12  # hex digits of sha256: 48 bits, collision-free for any realistic number of environments


def canonical_name(name: str) -> str:
    """PEP 503 normalised name (`PyYAML` -> `pyyaml`, `typing_extensions` -> `typing-extensions`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages(distributions: Iterable[importlib.metadata.Distribution] | None = None) -> dict[str, str]:
    """Every distribution installed for this interpreter, `{canonical name: version}`, sorted by name. When a name is
    installed twice on sys.path, the first one found wins, as it does for `import`. A sys.path folder inside a package
    is that package's vendored copy, not an install location: setuptools puts `setuptools/_vendor` on sys.path when
    something imports it (thop does), which must not change the list (nor the `env_hash`) halfway through a sweep.
    Reading every METADATA file takes 0.1-0.5 s, so the answer is kept (in the process and in the user cache) until
    an install, upgrade or removal changes the metadata entries of one of the folders."""
    if distributions is not None:
        return _packages(distributions)
    return dict(_interpreter_packages(_path_state(install_locations(sys.path))))


def install_locations(paths: Iterable[str]) -> tuple[str, ...]:
    """The sys.path folders that are install locations: not a folder inside a Python package (one whose parent has an
    ``__init__.py``, such as ``setuptools/_vendor``), which holds that package's private copies."""
    return tuple(path for path in paths if not (Path(path or ".").resolve().parent / "__init__.py").is_file())


def _packages(distributions: Iterable[importlib.metadata.Distribution]) -> dict[str, str]:
    found: dict[str, str] = {}
    for distribution in distributions:
        name = distribution.metadata["Name"]
        if name:
            found.setdefault(canonical_name(name), distribution.version)
    return dict(sorted(found.items()))


def _path_state(paths: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each folder with its metadata entries (``name-version.dist-info``, ``*.egg-info``): what pip adds, renames on
    an upgrade and removes; a list of a folder takes well under a millisecond, a read of every METADATA file 0.1-0.5 s.
    An ``.egg-info`` name may carry no version (``setup.py develop`` rewrites it in place), so such an entry is named
    with the time its metadata was last written (``pkg.egg-info@<ns>``). Other writes into a folder (a sweep's
    outputs in the current directory) do not change it."""
    state = []
    for path in paths:
        try:
            names = sorted(name for name in os.listdir(path or ".") if name.endswith(METADATA_SUFFIXES))
        except OSError:
            names = []
        state.append((path, tuple(_entry_label(Path(path or "."), name) for name in names)))
    return tuple(state)


def _entry_label(folder: Path, name: str) -> str:
    """The entry's name; an ``.egg-info``'s with the write time of its metadata."""
    if not name.endswith(".egg-info"):
        return name
    entry = folder / name
    try:
        return f"{name}@{(entry / 'PKG-INFO' if entry.is_dir() else entry).stat().st_mtime_ns}"
    except OSError:
        return name


@functools.lru_cache(maxsize=4)
def _interpreter_packages(path_state: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[tuple[str, str], ...]:
    """``installed_packages()`` over the folders of ``path_state``, as they are in it: read from the user cache when
    a command before this one read the same state (the first job of every command saves the 0.1-0.5 s), else from
    the metadata files, and then kept there."""
    cache_file = user_cache_dir() / ENVIRONMENTS_FOLDER / f"{_state_key(path_state)}.json"
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):  # none, unreadable, or not ours: read again
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
        if _as_state(cached["path_state"]) == path_state:  # the key is a hash: the state itself decides
            return tuple((str(name), str(version)) for name, version in cached["packages"])
    folders = [path for path, _entries in path_state]
    packages = tuple(_packages(importlib.metadata.distributions(path=folders)).items())
    _save(cache_file, {"path_state": path_state, "packages": packages})
    return packages


def _state_key(path_state: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    """The cache file's name for this interpreter and state."""
    return hashlib.sha256(json.dumps([sys.executable, path_state]).encode()).hexdigest()[:24]


def _as_state(stored: list[list[Any]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A state read back from JSON (lists) as ``_path_state`` makes it (tuples)."""
    return tuple((str(path), tuple(str(entry) for entry in entries)) for path, entries in stored)


def _save(cache_file: Path, content: dict[str, Any]) -> None:
    """Write ``cache_file`` whole or not at all (a temp file renamed over it), keeping the newest
    ``ENVIRONMENTS_KEPT`` states (each install or upgrade makes a new one); a cache that cannot be written is only
    slower."""
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        temp.write_text(json.dumps(content), encoding="utf-8")
        os.replace(temp, cache_file)
        kept = sorted(cache_file.parent.glob("*.json"), key=lambda path: path.stat().st_mtime_ns, reverse=True)
        for stale in kept[ENVIRONMENTS_KEPT:]:
            stale.unlink(missing_ok=True)


def requirement_lines(packages: Mapping[str, str]) -> list[str]:
    """`name==version` lines, sorted by canonical name: the text both the hash and the artifact are made of."""
    return [f"{name}=={version}" for name, version in sorted((canonical_name(n), v) for n, v in packages.items())]


def environment_hash(packages: Mapping[str, str]) -> str:
    """First 12 hex digits of sha256 over the sorted `name==version` lines (one per line, UTF-8). Stable across
    machines and orderings: the same set of versions always gives the same hash, any version change another."""
    text = "\n".join(requirement_lines(packages)) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def environment_files(packages: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """The artifacts that record the environment: `environment.txt`, pip-freeze style, with its hash on top."""
    packages = installed_packages() if packages is None else packages
    header = f"# env_hash {environment_hash(packages)}: sha256 of the name==version lines below (first 12 hex)\n"
    return {ENVIRONMENT_ARTIFACT: (header + "".join(f"{line}\n" for line in requirement_lines(packages))).encode()}


def environment_tags(packages: Mapping[str, str] | None = None) -> dict[str, str]:
    """The run tag `env_hash` (and `env_packages`, the list as compact JSON, within MLflow's 8,000-character tag
    limit when it fits; omitted otherwise)."""
    packages = installed_packages() if packages is None else packages
    tags = {ENV_HASH_TAG: environment_hash(packages)}
    listed = json.dumps(dict(sorted((canonical_name(n), v) for n, v in packages.items())), separators=(",", ":"))
    if len(listed) <= 8000:
        tags[ENV_PACKAGES_TAG] = listed
    return tags


def parse_environment_txt(text: str) -> dict[str, str]:
    """The packages an `environment.txt` artifact lists (comments and blank lines ignored)."""
    packages: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            packages[canonical_name(name)] = version
    return packages


def package_differences(a: Mapping[str, str], b: Mapping[str, str]) -> list[str]:
    """`name a-version -> b-version` for every package whose version differs, `+name version` / `-name version` for
    packages only in b / only in a; sorted by name."""
    a = {canonical_name(n): v for n, v in a.items()}
    b = {canonical_name(n): v for n, v in b.items()}
    changes = []
    for name in sorted(a.keys() | b.keys()):
        if name not in b:
            changes.append(f"-{name} {a[name]}")
        elif name not in a:
            changes.append(f"+{name} {b[name]}")
        elif a[name] != b[name]:
            changes.append(f"{name} {a[name]} -> {b[name]}")
    return changes


def _packages_from_tags(tags: Mapping[str, str]) -> dict[str, str] | None:
    try:
        listed = json.loads(tags[ENV_PACKAGES_TAG])
    except (KeyError, ValueError):
        return None
    return {str(k): str(v) for k, v in listed.items()} if isinstance(listed, dict) else None


def environment_note(
    tags_a: Mapping[str, str],
    tags_b: Mapping[str, str],
    names: tuple[str, str] = ("a", "b"),
    packages: tuple[Mapping[str, str] | None, Mapping[str, str] | None] = (None, None),
    max_listed: int = 5,
) -> str | None:
    """One line when two runs were measured in different Python environments (their `env_hash` tags differ), naming
    the packages that differ when known (from `packages`, e.g. parsed `environment.txt` artifacts, else from the
    `env_packages` tags); None when the hashes match or either run has none (older runs: nothing to compare)."""
    hash_a, hash_b = tags_a.get(ENV_HASH_TAG), tags_b.get(ENV_HASH_TAG)
    if not hash_a or not hash_b or hash_a == hash_b:
        return None
    note = f"environments differ: {names[0]} env_hash={hash_a}, {names[1]} env_hash={hash_b}"
    listed_a = packages[0] if packages[0] is not None else _packages_from_tags(tags_a)
    listed_b = packages[1] if packages[1] is not None else _packages_from_tags(tags_b)
    if listed_a is None or listed_b is None:
        return note
    changes = package_differences(listed_a, listed_b)
    if not changes:
        return note
    shown = ", ".join(changes[:max_listed])
    more = f" and {len(changes) - max_listed} more" if len(changes) > max_listed else ""
    return f"{note} ({shown}{more})"
