"""The MLflow side as a person meets it: `mlflow run` lands in the gflops-track experiment, and the UI (a real
`mlflow server`, driven by Debian's chromium through Playwright) opens on the runs and shows the comparison."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK_NO_THOP as QUICK
from conftest import SMALL_BLOCK as SMALL
from conftest import cli_env, run_cli
from servers import Server, free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def mlflow_run(tmp_path: Path, store_uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`mlflow run <repo checkout> --env-manager local ARGS` in ``tmp_path``, as a user runs it."""
    if shutil.which("mlflow", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mlflow CLI not installed beside this interpreter")
    env = cli_env(MLFLOW_TRACKING_URI=store_uri, XDG_CACHE_HOME=str(tmp_path / ".cache"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_mlflow_run_lands_in_gflops_track_unless_the_user_names_an_experiment(tmp_path: Path, store_uri: str) -> None:
    """Batch 4 of the 16-channel 8x8 block: MACs = 2 convs * (4 * 16 * 8 * 8 * 16 * 9)."""
    overrides = " ".join(["norm_fn=batch", "batch.size=4", *SMALL, *QUICK, f"hydra.run.dir={tmp_path / 'out'}"])
    done = mlflow_run(tmp_path, store_uri, "-P", f"overrides={overrides}")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store_uri)
    ours = client.get_experiment_by_name("gflops-track")
    assert ours is not None and ours.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([ours.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "residual_block-batch-b4-cpu-fp32"
    assert run.data.metrics["cost/macs"] == 2 * (4 * 16 * 8 * 8 * 16 * 9)
    (outer,) = client.search_runs(["0"])  # the run `mlflow run` made in Default: a pointer, nothing measured
    assert run.data.tags["gflops_track.mlflow_run"] == outer.info.run_id
    assert outer.data.tags["gflops_track.results_runs"] == run.info.run_id
    assert "gflops-track" in outer.data.tags["mlflow.note.content"] and not outer.data.metrics
    assert run.data.tags["mlflow.source.type"] == "PROJECT" and run.data.tags["mlflow.project.entryPoint"] == "main"
    named = mlflow_run(
        tmp_path, store_uri, "--experiment-name", "mine", "-P", f"overrides={overrides}"
    )  # the user said otherwise: MLflow's run is used, in their experiment
    assert named.returncode == 0, named.stderr[-3000:]
    mine = client.get_experiment_by_name("mine")
    (used,) = client.search_runs([mine.experiment_id])
    assert used.info.status == "FINISHED" and used.data.metrics["cost/macs"] == 2 * (4 * 16 * 8 * 8 * 16 * 9)
    assert mine.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(client.search_runs([ours.experiment_id])) == 1 and len(client.search_runs(["0"])) == 1


CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT_ENV = "GFLOPS_TRACK_UPDATE_SCREENSHOT"  # =1: copy the README's screenshot into docs/
README_SCREENSHOT = REPO / "docs" / "mlflow-sweep-overview.png"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, list[str], Path]]:
    """(server URL, experiment id, sweep run id, job run names, screenshot folder): a real sweep of three norms made
    by the CLI, served by a real `mlflow server` (stopped by PID)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is missing (pip install playwright)")
    folder = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    done = run_cli(["-m", "norm_fn=group,batch,instance", *SMALL, *QUICK], cwd=folder, MLFLOW_TRACKING_URI=store)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("gflops-track")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = sorted(run.info.run_name for run in runs if run is not parent)
    assert len(children) == 3
    (folder / "server").mkdir()
    server = Server(folder / "server", free_port(), backend_uri=store).start()
    shots = folder / "screenshots"
    shots.mkdir()
    print(f"screenshots in {shots}")
    try:
        yield server.uri, experiment.experiment_id, parent.info.run_id, children, shots
    finally:
        server.stop()


def test_mlflow_ui_opens_on_the_runs_and_shows_the_comparison(ui: tuple[str, str, str, list[str], Path]) -> None:
    from playwright.sync_api import sync_playwright

    uri, experiment_id, parent_id, children, shots = ui
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
            page.set_default_timeout(120_000)  # a busy machine: the UI's first load takes long
            # The link README gives. MLflow 3.17's UI opens an experiment on the runs only in its "Model training"
            # mode, a per-browser switch (default GenAI) that the URL's workflowType sets; mlflow.experimentKind
            # (which the tool sets) is what older 3.x UIs read.
            page.goto(f"{uri}/#/experiments/{experiment_id}?workflowType=machine_learning")
            row = page.locator("[role=row]", has_text="sweep ").first  # the sweep's row in the runs table
            row.wait_for()
            assert "/runs" in page.url
            page.screenshot(path=shots / "1-experiment-runs.png")
            row.locator('button[data-component-id$="runnamecellrenderer.tsx_46"]').click()  # expand the sweep
            for name in children:
                page.get_by_text(name, exact=True).first.wait_for()
            page.screenshot(path=shots / "2-sweep-with-children.png")
            # The chart view (its toggle sets compareRunsMode=CHART): one section per metric prefix, sorted by name,
            # so it opens on the cost and latency sections of the sweep's jobs.
            page.goto(page.url.replace("compareRunsMode=TABLE", "") + "&compareRunsMode=CHART")
            page.get_by_text("cost/gflops", exact=True).first.wait_for()
            lines = [line.strip() for line in page.inner_text("body").splitlines() if line.strip()]
            sections = [lines[i] for i in range(len(lines) - 1) if re.fullmatch(r"\(\d+\)", lines[i + 1])]
            assert sections[:4] == ["cost", "latency", "layers", "memory"], sections  # layers: the per-layer pass
            assert {"peak", "speed", "timing", "xcheck"} <= set(sections) and "Model metrics" in sections
            assert lines[lines.index("cost") + 1] == "(16)"  # params, MACs, FLOPs (and by category), bytes, intensity
            page.locator("svg.main-svg").first.wait_for()  # a chart drawn (plotly), not its loading spinner
            page.screenshot(path=shots / "5-chart-view.png")
            page.goto(f"{uri}/#/experiments/{experiment_id}?workflowType=machine_learning")
            row = page.locator("[role=row]", has_text="sweep ").first
            row.wait_for()
            row.get_by_role("link").first.click()  # click 1 of 1: the sweep's Overview holds the comparison
            overview = page.locator("table", has_text=children[0])
            overview.first.wait_for()
            table_text = overview.first.inner_text()
            assert all(name in table_text for name in children) and "GFLOPs" in table_text
            page.get_by_text("Show more", exact=True).first.click()  # the UI folds long descriptions
            overview.first.scroll_into_view_if_needed()
            page.screenshot(path=shots / "3-sweep-overview.png")
            page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{parent_id}/artifacts/report.html")
            frame = page.frame_locator("iframe").first
            report = frame.locator("table#runs")
            report.wait_for()
            assert all(name in report.inner_text() for name in children)
            page.screenshot(path=shots / "4-report-in-artifact-viewer.png")
        finally:
            browser.close()
    if os.environ.get(SCREENSHOT_ENV) == "1":  # README's copy: the same pixels in 256 colours (a third of the bytes)
        from PIL import Image

        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        Image.open(shots / "3-sweep-overview.png").convert("RGB").quantize(256).save(README_SCREENSHOT, optimize=True)
