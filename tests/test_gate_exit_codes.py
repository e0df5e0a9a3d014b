"""The regression gate's exit codes, as a CI job reads them, without a subprocess: ``gflops-track compare --baseline
--candidate`` run in process (``gflops_track.compare.cli.main``) on sweeps logged with known samples into a real
SQLite store (the helpers of test_gate.py). The same command in a subprocess is test_gate.py's slow test."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from gflops_track.cli.compare import main as compare_main
from gflops_track.compare.gate import MIN_SAMPLES
from test_gate import SAME_NAME, jobs, log_sweep


def test_gate_exit_codes_in_process(store_uri: str, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """What a CI job reads, without a subprocess: 0 no regression; 1 a REGRESSION (here +96% on the first job); 3 no
    regression but a row INCONCLUSIVE (too few samples); 2 an ambiguous match (the candidate has two runs with the
    overrides 'model.planes=32', named with their ids on stderr) or nothing to pair."""
    monkeypatch.setenv("COLUMNS", "250")
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gate")
    baseline = log_sweep(client, experiment, jobs(0))

    def gate_in_process(candidate: str) -> tuple[int, str, str]:
        code = compare_main(["--tracking-uri", store_uri, "--baseline", baseline, "--candidate", candidate])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = gate_in_process(log_sweep(client, experiment, jobs(20)))
    assert code == 0 and "0 regression(s), 0 inconclusive in 2 compared row(s)" in out
    code, out, _ = gate_in_process(log_sweep(client, experiment, jobs(10, slow_first=10.6 / 5.4)))
    assert code == 1 and "1 regression(s), 0 inconclusive in 2 compared row(s)" in out
    code, out, _ = gate_in_process(log_sweep(client, experiment, jobs(40, n=MIN_SAMPLES - 1)))
    assert code == 3 and "0 regression(s), 2 inconclusive" in out and "too few samples" in out
    doubled = log_sweep(client, experiment, [*jobs(50), jobs(60)[0]])
    code, out, err = gate_in_process(doubled)
    assert code == 2 and out == ""
    assert "ambiguous match: the candidate has 2 runs with the same identity 'model.planes=32'" in err
    assert err.count(SAME_NAME) == 2 and err.count("\n") == 1  # both runs named (name and id), on one line
    elsewhere = [{**job, "tags": {**job["tags"], "overrides": f"model.planes={planes}"}}  # type: ignore[dict-item]
                 for job, planes in zip(jobs(70), (16, 128), strict=True)]  # fmt: skip
    code, out, _ = gate_in_process(log_sweep(client, experiment, elsewhere))
    assert code == 2 and "match by overrides" in out and "candidate only: " in out
