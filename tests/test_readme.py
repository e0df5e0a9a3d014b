"""README.md and docs/*.md run: every code block and every shell command in them is executed by a test, so they
cannot drift.

Python blocks and the shell commands that run on one machine are executed here (with the tests' quick timing
appended to sweeps, and placeholders such as ``<parent run id>`` filled from a sweep this module makes); a command
written on two pages runs once. Commands that need another setup are run by the test named for them in ``ELSEWHERE``
(each entry is checked to still say so); a command that matches neither fails the test, so a new command cannot go
untested. Every relative link must lead to a file (and heading) that exists.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import requests

from conftest import QUICK_NO_THOP, SMALL_BLOCK, WITH_TORCHVISION_OPS, cli_env, extra_path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
README_MAX_LINES = 300
FIRST_SCREENFUL = 30  # lines: how to profile your own model and open it in the UI must be answered within them
QUICK = [*SMALL_BLOCK, *QUICK_NO_THOP]

# command pattern -> (file that runs it, text that file must contain)
ELSEWHERE: dict[str, tuple[str, str]] = {
    r"^python3\.11 -m venv .* pip install -e '\.\[dev\]' && python -m pytest$": (
        ".ci/run", "python3.11 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
        "pip install -e '.[dev]'"),
    r"^python3\.11 -m venv .* pip install -e \. && python -m gflops_track -m norm_fn=group,batch,instance$": (
        "tests/test_main.py", '["-m", "norm_fn=group,batch,instance"]'),
    r"^(UV_TORCH_BACKEND=\S+ )?mlflow run \. --env-manager uv": ("tests/test_locked_env.py", '"--env-manager", "uv"'),
    r"^PIP_EXTRA_INDEX_URL=\S+ mlflow run \. --env-manager virtualenv": (
        "tests/test_locked_env.py", "python_env.yaml"),
    r"^mlflow run \. --env-manager local( -e sweep)? -P overrides=": ("tests/test_team.py", '"--env-manager", "local"'),
    r"^mlflow run \. --env-manager local -e compare": ("tests/test_team.py", '"-e", "compare"'),
    r"^pip install -e '\.\[team\]'$": ("pyproject.toml", "team = ["),
    r"^(MLFLOW_AUTH_CONFIG_PATH=.* )?mlflow server .*--backend-store-uri postgresql": (
        "tests/servers.py", "postgresql://"),
    r"^initdb -D pgdata": ("tests/servers.py", "initdb"),
    r"^postgres -D pgdata": ("tests/servers.py", '"postgres"'),
    r"^PGPASSWORD=.* createdb": ("tests/servers.py", "createdb"),
    r"^export MLFLOW_TRACKING_(URI|USERNAME)=": ("tests/test_team.py", "MLFLOW_TRACKING_USERNAME"),
    r"^python -m gflops_track -m norm_fn=group,batch,instance$": ("tests/test_team.py", "MLFLOW_TRACKING_URI"),
    r"hydra/launcher=slurm_(gpu|cpu)": ("tests/test_slurm.py", "hydra/launcher=slurm_cpu"),
    r"^gflops-track whatif --run <id> --hardware": ("tests/test_whatif.py", '"--hardware", "H100 SXM"'),
    r"^gflops-track compare --layers": ("tests/test_whatif.py", '"--layers"'),
    r"^python -m gflops_track model=(hf |torchvision |timm |custom model\._target_=mymodels\.)": (
        "tests/test_readme.py", "def test_profile_your_model_examples"),
}  # fmt: skip


def blocks(language: str) -> list[str]:
    """The fenced blocks of README.md, then of each docs page, opened with ```language (``""``: a bare fence)."""
    return [block for page in PAGES for block in page_blocks(page.read_text(), language)]


def page_blocks(text: str, language: str) -> list[str]:
    found: list[str] = []
    current: list[str] | None = None
    opened = ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, opened = [], line[3:].strip()
            else:
                if opened == language:
                    found.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return found


def shell_commands() -> list[str]:
    """Every command of every bash block, once: continuation lines joined, trailing comments dropped."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and re.sub(r"\s+", " ", command) not in commands:
                commands.append(re.sub(r"\s+", " ", command))
    return commands


def elsewhere(command: str) -> tuple[str, str] | None:
    return next((where for pattern, where in ELSEWHERE.items() if re.search(pattern, command)), None)


def test_every_command_is_run_here_or_by_a_named_test() -> None:
    runnable = [c for c in shell_commands() if elsewhere(c) is None]
    unknown = [c for c in runnable if not c.startswith(("python -m gflops_track", "gflops-track ", "mlflow ui "))]
    assert not unknown, f"documented commands no test runs: {unknown}"
    for pattern, (path, text) in ELSEWHERE.items():
        assert any(re.search(pattern, c) for c in shell_commands()), f"stale entry (in no page): {pattern}"
        assert text in (ROOT / path).read_text(), f"{path} no longer runs {pattern!r} (looked for {text!r})"


def test_readme_configuration_table_states_the_schema_defaults() -> None:
    """The defaults are written once, in the options dataclasses; docs/configuration.md's table must say the same."""
    from gflops_track.app.schema import CountingConfig, PeakConfig, RuntimeConfig, TimingConfig

    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*?) \|", CONFIGURATION, re.M)}
    for node, schema in (("timing", TimingConfig), ("runtime", RuntimeConfig), ("peak", PeakConfig),
                         ("counting", CountingConfig)):  # fmt: skip
        for field in fields(schema):
            default = "null" if field.default is None else str(field.default).lower()
            stated = re.search(rf"`{field.name}=\"?([^`\"]*)\"?`", rows[node])
            assert stated, f"the configuration table does not state {node}.{field.name}"
            number = re.fullmatch(r"[0-9.e+-]+", default) and re.fullmatch(r"[0-9.e+-]+", stated.group(1))
            same = float(default) == float(stated.group(1)) if number else default == stated.group(1)
            assert same, f"the docs say {node}.{field.name}={stated.group(1)}, the schema {default}"


def test_readme_is_short_and_answers_the_first_question_first() -> None:
    """A newcomer reads the README in minutes; the reference lives in docs/. Its first screenful says how to profile
    your own model and open it in the MLflow UI."""
    lines = README.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    first = "\n".join(lines[:FIRST_SCREENFUL])
    assert "model._target_=" in first and "mlflow ui --backend-store-uri" in first


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or page.name != "README.md"
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} leads nowhere"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", target.read_text(), re.M)
            assert anchor in {_anchor(heading) for heading in headings}, f"{page.name}: no heading for {link}"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run(index: int, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", blocks("python")[index]], cwd=tmp_path, env=cli_env(XDG_CACHE_HOME=str(tmp_path)),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def _run(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    words = shlex.split(command.replace("\\`", "`"))  # a backquote escaped for the shell inside double quotes
    program = {"gflops-track": [sys.executable, "-m", "gflops_track.cli"], "python": [sys.executable]}
    return subprocess.run(
        [*program[words[0]], *words[1:]], cwd=cwd, env=cli_env(XDG_CACHE_HOME=str(cwd / ".cache"), **env),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def readme_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """README's sweeps, run in one directory (quick timing appended), and the ids that fill its placeholders."""
    from mlflow.tracking import MlflowClient

    cwd = tmp_path_factory.mktemp("readme")
    for command in shell_commands():
        if command.startswith("python -m gflops_track") and elsewhere(command) is None:
            quick = [o for o in QUICK if o.split("=")[0] not in command] if "model=custom" not in command else \
                QUICK_NO_THOP  # fmt: skip
            done = _run(f"{command} {' '.join(quick)}", cwd)
            assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep_overrides")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    ids = {
        "--sweep <id>": f"--sweep {parents[0].info.run_id}",
        "<parent run id>": parents[0].info.run_id,
        "<id>": children[0].info.run_id,
        "<run or sweep id>": parents[0].info.run_id,
    }
    return cwd, ids


@pytest.mark.slow
def test_gflops_track_commands_run(readme_store: tuple[Path, dict[str, str]]) -> None:
    cwd, ids = readme_store
    commands = [c for c in shell_commands() if c.startswith("gflops-track ") and elsewhere(c) is None]
    assert commands
    for command in commands:
        for placeholder, value in ids.items():
            command = command.replace(placeholder, value)
        done = _run(command, cwd)
        allowed = {0, 3} if "--baseline" in command else {0}  # the gate: a sweep against itself is ok, or INCONCLUSIVE
        assert done.returncode in allowed, (
            f"{command}\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}"
        )  # with quick timing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_mlflow_ui_command_serves_the_store(readme_store: tuple[Path, dict[str, str]]) -> None:
    cwd, _ = readme_store
    (command,) = [c for c in shell_commands() if c.startswith("mlflow ui ")]
    port = _free_port()
    words = [sys.executable, "-m", "mlflow", *shlex.split(command)[1:], "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(words, cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                      params={"max_results": 10}, timeout=5)  # fmt: skip
                break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail("mlflow ui did not answer within 120 s")
        assert answer.status_code == 200
        assert "gflops-track" in {e["name"] for e in answer.json()["experiments"]}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_invalid_config_lines_are_what_the_command_prints(tmp_path: Path) -> None:
    """The README's example of bad input shows lines the tool really prints, for the overrides they name."""
    (example,) = [b for b in blocks("") if "invalid config" in b]
    for line in example.splitlines():
        key_value = re.search(r"invalid config: (\S+=\S+) is not allowed", line)
        assert key_value, line
        done = _run(f"python -m gflops_track {key_value.group(1)}", tmp_path)
        assert done.returncode == 2 and line.removesuffix(" ...") in done.stderr, done.stderr


PROFILE_SECTION = "## Profile your model\n"
LIBRARY_OF = {"model=hf": ("hf", "transformers"), "model=torchvision": ("vision", "torchvision"),
              "model=timm": ("vision", "timm")}  # fmt: skip
NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+")


def profile_examples() -> list[tuple[str, str]]:
    """README's "Profile your model": each bash block's command and the text block after it (what it prints)."""
    section = README.split(PROFILE_SECTION, 1)[1].split("\n## ", 1)[0]
    pairs = re.findall(r"```bash\n(.*?)\n```\s*```text\n(.*?)\n```", section, re.S)
    return [(command.strip(), printed) for command, printed in pairs]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(profile_examples())))
def test_profile_your_model_examples(index: int, tmp_path: Path) -> None:
    """Each example runs as written (in a folder holding the section's mymodels.py, with quick timing) and prints
    the figures README shows: every number, and every line without one, is in its output. The model libraries come
    from .extras/ (see tests/conftest.py); an example whose library is missing is skipped."""
    command, printed = profile_examples()[index]
    module = next(block for block in blocks("python") if block.startswith("# mymodels.py"))
    (tmp_path / "mymodels.py").write_text(module)
    words = shlex.split(command)
    library = next((LIBRARY_OF[word] for word in words if word in LIBRARY_OF), None)
    pythonpath = [path for path in [extra_path(*library)] if path] if library else []
    start = ["-c", WITH_TORCHVISION_OPS] if library and library[0] == "vision" else ["-m", "gflops_track"]
    quick = ["timing.warmup=1", "timing.min_repeats=3", "timing.max_time_s=0.3", "peak.measure=false"]
    done = subprocess.run(
        [sys.executable, *start, *words[3:], *quick], cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env=cli_env(pythonpath=pythonpath, XDG_CACHE_HOME=str(tmp_path / ".cache")),
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    for line in printed.splitlines():
        figures = NUMBER.findall(line)
        for figure in figures or [line.strip()]:
            assert figure in done.stdout, f"{command}: README shows {figure!r}, the command printed:\n{done.stdout}"
