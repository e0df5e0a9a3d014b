"""Every way a user or the world can break a run: a clear message, a correct MLflow state, nothing lost."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from conftest import QUICK_NO_THOP as QUICK
from conftest import SMALL_BLOCK as SMALL
from conftest import cli_env, run_cli
from gflops_track.app.preflight import preflight
from gflops_track.cli.run import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]


def config_keys() -> list[str]:
    """Every leaf key of the composed default config, plus the choice groups."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from gflops_track.app.schema import register_schema
    from gflops_track.tracking.records import flatten_params

    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose("config")
    leaves = flatten_params(OmegaConf.to_container(config, resolve=True))
    return [*sorted(leaves), "model", "norm_fn", "device", "batch", "precision", "input.kwargs.mask"]


CONFIG_KEYS = config_keys()
VALUES = st.one_of(
    st.integers(min_value=-3, max_value=10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(str),
    st.sampled_from(["", "null", "true", "abc", "[]", "[1,2]", "[-1]", "{a:1}", "'{x}'", "group", "cpu", "fp16", "??"]),
    st.text(alphabet="abc01-_.,=[]{}()'\" $:~+*", max_size=8),
)


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(CONFIG_KEYS), value=VALUES)
def test_any_override_is_accepted_or_named_in_one_clear_line(
    key: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'p.db'}")
    override = f"{key}={value}"
    checked = preflight([override], CONFIG_DIR)  # must never raise
    for line in checked.errors:
        assert "\n" not in line and "Traceback" not in line
        assert key.split(".")[0] in line or override in line, (override, line)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["batch.size", "model.planes", "model.stride", "timing.min_repeats", "runtime.threads"]),
    value=st.sampled_from(["-1", "0", "1", "2", "3", "abc", "[1]"]),
)
def test_the_app_runs_or_fails_cleanly(key: str, value: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The real command: exit 0, 1 or 2, never a traceback; exit 2 creates no run; no run is left RUNNING."""
    cwd = tmp_path_factory.mktemp("app")
    uri = f"sqlite:///{cwd / 'store.db'}"
    done = run_cli([*SMALL, *QUICK, f"{key}={value}"], cwd=cwd, MLFLOW_TRACKING_URI=uri)
    assert done.returncode in (0, 1, 2) and "Traceback" not in done.stderr, done.stderr[-2000:]
    runs = all_runs(uri) if (cwd / "store.db").exists() else []
    if done.returncode == 2:
        assert runs == [] and "invalid config" in done.stderr
    assert all(run.info.status in ("FINISHED", "FAILED") for run in runs)


@pytest.mark.slow
def test_model_faults_are_failed_runs_and_the_sweep_goes_on(tmp_path: Path, store_uri: str) -> None:
    targets = "fixture_models.Missing,fixture_models.WrongChannels,fixture_models.Raises,fixture_models.SoftmaxOnly"
    args = ["-m", "model=custom", f"model._target_={targets}", "+model.in_channels=3", "batch.height=8", *QUICK]
    done = run_cli(args, cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    children = {r.data.params["model._target_"]: r for r in all_runs(store_uri) if "mlflow.parentRunId" in r.data.tags}
    assert len(children) == 4
    assert "fixture_models.Missing" in children["fixture_models.Missing"].data.tags["error"]
    assert "expected input" in children["fixture_models.WrongChannels"].data.tags["error"]
    assert "forward exploded on purpose" in children["fixture_models.Raises"].data.tags["error"]
    for name in ("fixture_models.Missing", "fixture_models.WrongChannels", "fixture_models.Raises"):
        assert children[name].info.status == "FAILED"
    no_params = children["fixture_models.SoftmaxOnly"]
    assert no_params.info.status == "FINISHED" and no_params.data.metrics["cost/params"] == 0
    assert no_params.data.metrics["cost/flops_activation"] == 5 * 2 * 3 * 8 * 32  # softmax 5/elem, (2, 3, 8, 32)


@pytest.mark.slow
def test_unallocatable_batch_is_a_failed_run(tmp_path: Path, store_uri: str) -> None:
    done = run_cli([*SMALL, *QUICK, "batch.size=1000000000"], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 1
    (run,) = all_runs(store_uri)
    assert run.info.status == "FAILED" and "allocate" in run.data.tags["error"].lower()


@pytest.mark.slow
def test_several_inputs_keyword_inputs_and_dict_outputs_are_normal(tmp_path: Path, store_uri: str) -> None:
    args = ["model=custom", "model._target_=fixture_models.TwoInputsDictOutput", "+model.features=8"]
    inputs = ["input.shape=[8]", "input.args=[[8]]", "+input.kwargs.mask=[8]", "batch.size=4"]
    done = run_cli([*args, *inputs, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = all_runs(store_uri)
    metrics = run.data.metrics
    assert metrics["cost/macs"] == 4 * 8 * 8  # linear: rows x in x out
    assert metrics["cost/flops_elementwise"] == 4 * 8 + 4 * 8  # + y, * mask
    assert metrics["cost/flops_bias"] == 4 * 8 and metrics["latency/median_ms"] > 0


def interrupt_sweep(tmp_path: Path, uri: str, sig: signal.Signals) -> tuple[int, list]:
    """Start a 3-job sweep of slow jobs; signal it while the second job is timing."""
    sleepers = ["model=custom", "model._target_=fixture_models.Sleeper", "+model.in_channels=3", "batch.height=8"]
    endless = ["timing.min_repeats=100000", "timing.max_repeats=100000", "timing.max_time_s=5"]
    env = cli_env(MLFLOW_TRACKING_URI=uri, XDG_CACHE_HOME=str(tmp_path / ".cache"))
    process = subprocess.Popen(
        [sys.executable, "-m", "gflops_track", "-m", "+model.ms=20,21,22", *sleepers, *endless, "peak.measure=false"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            runs = [r for r in all_runs(uri) if "mlflow.parentRunId" in r.data.tags]
        except Exception:
            continue
        if sum(r.info.status == "FINISHED" for r in runs) == 1 and sum(r.info.status == "RUNNING" for r in runs) == 1:
            break
    time.sleep(1.0)
    process.send_signal(sig)
    process.communicate(timeout=60)
    return process.returncode, all_runs(uri)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_interrupt_kills_current_run_keeps_finished_ones(
    tmp_path: Path, store_uri: str, sig: signal.Signals, code: int
) -> None:
    returncode, runs = interrupt_sweep(tmp_path, store_uri, sig)
    assert returncode == code
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.start_time)
    assert [r.info.status for r in children] == ["FINISHED", "KILLED"]  # the third job never started
    assert children[0].data.metrics["latency/median_ms"] > 20  # what was measured is kept
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("uri_of", "message"),
    [
        (lambda d: f"sqlite:///file:{d / 'ro.db'}?mode=ro&uri=true", "attempt to write a readonly database"),
        (lambda d: f"sqlite:///{d / 'corrupt.db'}", "file is not a database"),
        (lambda d: f"sqllite:///{d / 'typo.db'}", "got unsupported URI 'sqllite:///"),
    ],
)
def test_store_faults_stop_before_measuring(tmp_path: Path, uri_of, message: str) -> None:
    MlflowClient(f"sqlite:///{tmp_path / 'ro.db'}").search_experiments()  # an existing, valid store, opened read-only
    (tmp_path / "corrupt.db").write_bytes(b"this is not sqlite" * 100)
    uri = uri_of(tmp_path)
    done = run_cli([*SMALL, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot be used" in done.stderr and message in done.stderr
    assert all_runs(f"sqlite:///{tmp_path / 'ro.db'}") == []


@pytest.mark.slow
def test_no_secret_reaches_the_store(tmp_path: Path, store_uri: str) -> None:
    secret = "tok-9f8e7d6c5b4a-do-not-log"
    done = run_cli(
        ["-m", "norm_fn=group,none", *SMALL, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri,
        GFLOPS_TEST_API_TOKEN=secret, MLFLOW_TRACKING_TOKEN=secret, AWS_SECRET_ACCESS_KEY=secret,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(all_runs(store_uri)) == 3
    for path in tmp_path.rglob("*"):  # the store, its artifacts, Hydra's output directories
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_soak_short_form() -> None:
    """bench/soak.py with 20 jobs: every run complete, and the store answers the UI's run search."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--jobs", "20"],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "20/20" in done.stdout and "INCOMPLETE" not in done.stdout


FULL_FILE_BYTES = 1200  # files the 'full' store still takes: config.yaml (~0.8 KB) fits, summary.txt (~1.5 KB) not


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def limit_file_size() -> None:
    """In the child process: files cannot grow past FULL_FILE_BYTES; writes fail with EFBIG ("File too large")
    instead of killing the process with SIGXFSZ. Needs no privilege."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_FILE_BYTES, FULL_FILE_BYTES))


class ArtifactServer:
    """A real artifacts-only `mlflow server` (the tracking store stays a local SQLite file the job writes itself),
    optionally under RLIMIT_FSIZE: an artifact store that refuses big files, as a full disk does. Stopped by PID."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.location = f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts/full"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, full: bool) -> ArtifactServer:
        command = [
            sys.executable, "-m", "mlflow", "server", "--artifacts-only", "--host", "127.0.0.1",
            "--port", str(self.port), "--artifacts-destination", str(self.folder), "--workers", "1",
        ]  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            command, cwd=self.folder, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=limit_file_size if full else None,
        )  # fmt: skip  # cwd: whatever the server writes beside its artifacts stays in the test's temp dir
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("artifact server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(params=["file-size-limit", "tmpfs"])
def full_artifact_store(request: pytest.FixtureRequest, tmp_path: Path):
    """(artifact location, make room, what the console names): an artifact store that fills up mid-run.

    file-size-limit runs everywhere: an artifacts-only server under RLIMIT_FSIZE refuses files over 1,200 bytes (the
    run's config.yaml is stored, its summary.txt is not), then is restarted without the limit. tmpfs is a real full
    disk: a 256 KiB tmpfs nearly filled, then emptied; it needs the privilege to mount, and is skipped without it."""
    if request.param == "file-size-limit":
        server = ArtifactServer(tmp_path / "served-artifacts", free_port()).start(full=True)

        def make_room() -> None:
            server.stop()
            server.start(full=False)

        try:
            yield server.location, make_room, "failed ("
        finally:
            server.stop()
        return
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    filler = mount_point / "filler"
    try:
        filler.write_bytes(b"\0" * (256 - 8) * 1024)
        yield (mount_point / "artifacts").as_uri(), filler.unlink, "No space left on device"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_full_artifact_disk_spools_then_sync_completes_the_run(
    tmp_path: Path, store_uri: str, full_artifact_store
) -> None:
    location, make_room, message = full_artifact_store
    client = MlflowClient(store_uri)
    client.create_experiment("gflops-track", artifact_location=location)
    done = run_cli([*SMALL, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 0, done.stderr[-2000:]
    assert message in done.stderr and "gflops-track sync" in done.stderr
    assert list((tmp_path / "outputs").rglob("mlflow_spool/*/run.json"))  # the rest went to the spool
    (run,) = all_runs(store_uri)
    assert run.data.params["batch.size"] == "2"  # what reached the store before the disk filled is kept
    make_room()
    sync = subprocess.run(
        [sys.executable, "-m", "gflops_track.cli", "sync", "--tracking-uri", store_uri, "outputs"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sync.returncode == 0, sync.stdout + sync.stderr
    (synced,) = all_runs(store_uri)  # the same run, completed; no duplicate
    assert synced.info.run_id == run.info.run_id and synced.info.status == "FINISHED"
    assert synced.data.metrics["cost/macs"] == 2 * (2 * 16 * 8 * 8 * 16 * 9)  # two 3x3 convs, 16->16, 8x8, batch 2
    assert {"summary.txt", "layers.csv", "latency_samples.json"} <= {
        a.path for a in client.list_artifacts(synced.info.run_id)
    }
