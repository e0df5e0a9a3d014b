"""What the regression gate prints, line by line (``cli.compare.run_gate``), on sweeps logged with known samples into
a real SQLite store (test_gate.py's helpers): every line's exact text, its style, and that a line is never wrapped
(a CI log keeps one line per row) nor coloured by rich's highlighter (numbers, brackets, quotes) in a colour terminal
narrower than the lines."""

from __future__ import annotations

import io
import json
import re

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from gflops_track.cli.compare import run_gate
from gflops_track.compare.gate import MIN_SAMPLES
from test_compare_report import sleeper_config
from test_gate import log_sweep, lognormal

ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
RED, YELLOW, GREEN, RESET = "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[0m"
WIDTH = 20  # narrower than every line the gate prints: a wrapped line would show


def terminal() -> tuple[Console, io.StringIO]:
    """A colour terminal 20 columns wide, as rich sees one."""
    out = io.StringIO()
    return Console(file=out, width=WIDTH, force_terminal=True, color_system="standard"), out


def lines(out: io.StringIO) -> list[tuple[str, str]]:
    """Each printed line as (its style's escape code, or "" when unstyled; its text). Only the gate's own styles may
    appear, each around a whole line: rich's highlighter (bold cyan numbers, ...) would add others."""
    result = []
    for line in out.getvalue().splitlines():
        codes = ESCAPE.findall(line)
        if codes:
            assert len(codes) == 2 and codes[0] in (RED, YELLOW, GREEN) and line.startswith(codes[0]), repr(line)
            assert line.endswith(RESET), repr(line)
        result.append((codes[0] if codes else "", ESCAPE.sub("", line)))
    return result


def job(overrides: str, samples: list[float], model: str = "Alpha", **extra: object) -> dict[str, object]:
    """One job of a sweep: a model of its own (its group), told apart by its overrides."""
    tags = {"overrides": overrides, "model": model, "model_target": f"fixtures.{model}", **extra.pop("tags", {})}  # type: ignore[dict-item]
    return {"name": f"{model.lower()}-{overrides.split()[-1]}", "samples": samples, "tags": tags, **extra}


def with_environment(client: MlflowClient, parent: str, env_hash: str, torch_version: str) -> None:
    """The sweep's jobs tagged with ``env_hash`` and their environment.txt (no env_packages tag: read from it)."""
    for run in client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}'"):  # fmt: skip
        client.set_tag(run.info.run_id, "env_hash", env_hash)
        client.log_text(run.info.run_id, f"# environment\ntorch=={torch_version}\nnumpy==2.0.0\n", "environment.txt")


def test_every_line_of_a_gate_with_every_outcome(store_uri: str) -> None:
    """Two groups (models Alpha and Beta: labels name their group), the candidate on other hardware and in another
    environment (torch 2.4.0 -> 2.5.0, read from environment.txt): a REGRESSION (red), an INCONCLUSIVE row (too few
    samples, yellow), an ok row (green), a FAILED candidate run and a row the candidate did not run (MISSING, red),
    and a candidate row with no baseline (not compared). Exit 4; every line whole at 20 columns, unhighlighted."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gate-output")
    few = MIN_SAMPLES - 1
    baseline = log_sweep(client, experiment, [
        job("model=alpha width=1", lognormal(1, 30, 5.0, 0.02)),
        job("model=alpha width=2", lognormal(2, few, 8.0, 0.02)),
        job("model=beta width=1", lognormal(3, 30, 12.0, 0.02), model="Beta"),
        job("model=beta width=2", lognormal(4, 30, 20.0, 0.02), model="Beta"),
        job("model=beta width=3", lognormal(5, 30, 30.0, 0.02), model="Beta"),
    ])  # fmt: skip
    other = {"hardware": "cpu:other"}
    candidate = log_sweep(client, experiment, [
        job("model=alpha width=1", lognormal(11, 30, 10.0, 0.02), tags=other),
        job("model=alpha width=2", lognormal(12, few, 8.0, 0.02), tags=other),
        job("model=beta width=1", lognormal(13, 30, 12.0, 0.02), model="Beta", tags=other),
        job("model=beta width=2", [], model="Beta", tags=other, status="FAILED"),
        job("model=beta width=4", lognormal(15, 30, 40.0, 0.02), model="Beta", tags=other),
    ])  # fmt: skip
    with_environment(client, baseline, "aaaaaaaaaaaa", "2.4.0")
    with_environment(client, candidate, "bbbbbbbbbbbb", "2.5.0")
    console, out = terminal()
    code = run_gate(client, baseline, candidate, "5%", console)
    printed = lines(out)
    assert code == 4, printed
    failed_id = next(r.info.run_id for r in client.search_runs([experiment], "attributes.status = 'FAILED'"))
    expected_head = [
        ("", "rows matched by overrides"),
        (YELLOW, "hardware differs: baseline ['cpu:test'], candidate ['cpu:other']"),
        (YELLOW, "environments differ: baseline env_hash=aaaaaaaaaaaa, candidate env_hash=bbbbbbbbbbbb "
                 "(torch 2.4.0 -> 2.5.0)"),
    ]  # fmt: skip
    assert printed[:3] == expected_head
    verdicts = printed[3:9]
    assert [style for style, _ in verdicts] == [RED, YELLOW, GREEN, RED, RED, YELLOW], verdicts
    assert verdicts[0][1].startswith("Alpha: width=1: 10% quantile ")
    assert "REGRESSION (> 5.0% and beyond" in verdicts[0][1]
    assert "99% bootstrap of stored samples, Mann-Whitney U p=" in verdicts[0][1]  # the stored samples were read
    assert verdicts[1][1].startswith("Alpha: width=2: ")
    assert f"INCONCLUSIVE: too few samples ({few}, {few}; at least {MIN_SAMPLES} each)" in verdicts[1][1]
    assert verdicts[2][1].startswith("Beta: width=1: 10% quantile ") and verdicts[2][1].endswith(": ok")
    assert "99% bootstrap of stored samples, Mann-Whitney U p=" in verdicts[2][1]
    assert verdicts[3][1].startswith("Beta: width=2: ") and verdicts[3][1].endswith(
        f"ms -> FAILED: the candidate's run beta-width=2 ({failed_id[:8]}) is FAILED"
    ), verdicts[3]
    assert verdicts[4][1].startswith("Beta: width=3: ") and verdicts[4][1].endswith(
        "ms -> MISSING: the candidate has no run of this row"
    ), verdicts[4]
    assert verdicts[5][1] == "not compared (candidate only: beta-width=4 [model=beta width=4])"
    assert printed[9:] == [
        ("", "1 regression(s), 1 inconclusive in 3 compared row(s), 1 FAILED, 1 MISSING, threshold 5.0%, "
             "at least 10 samples per side"),
    ]  # fmt: skip
    assert "re-measuring" not in out.getvalue()  # no --rerun: an INCONCLUSIVE row stays so


def test_one_group_on_one_machine_says_no_hardware_or_environment_note(store_uri: str) -> None:
    """One model on one machine in one environment: no note, labels without their group's name; --min-samples 2
    is allowed (and said in the summary), a threshold as a fraction is printed as a percentage."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gate-output")
    same = {"env_hash": "cccccccccccc"}
    sweeps = [
        log_sweep(client, experiment, [job("model=alpha width=1", lognormal(seed, 8, 5.0, 0.02), tags=same),
                                       job("model=alpha width=2", lognormal(seed + 1, 8, 9.0, 0.02), tags=same)])
        for seed in (0, 10)
    ]  # fmt: skip
    console, out = terminal()
    code = run_gate(client, *sweeps, "0.125", console, min_samples=2)
    printed = lines(out)
    assert code == 0, printed
    assert printed[0] == ("", "rows matched by overrides") and len(printed) == 4
    assert [text.split(": ")[0] for _, text in printed[1:3]] == ["width=1", "width=2"]
    assert printed[3] == ("", "0 regression(s), 0 inconclusive in 2 compared row(s), threshold 12.5%, at least 2 "
                              "samples per side")  # fmt: skip
    with pytest.raises(ValueError) as refused:
        run_gate(client, *sweeps, "5%", console, min_samples=1)
    assert str(refused.value) == "--min-samples=1 is not allowed: it must be an integer >= 2"


def test_an_inconclusive_row_is_re_measured_only_when_asked(store_uri: str) -> None:
    """Stored runs with 5 samples each: INCONCLUSIVE, and without rerun nothing is re-measured (the runs' config.yaml
    is not even read). With rerun and a 0.3 s budget (the runs' own timing.max_time_s is 5 s) the pair is rebuilt and
    timed now: the reason is said first, then the verdict of the rounds, within that budget."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("rerun")
    ids = []
    for name in ("base", "cand"):
        run_id = client.create_run(experiment, run_name=name, tags={"hardware": "cpu:test"}).info.run_id
        samples = [1.0 + 0.01 * i for i in range(5)]
        client.log_metric(run_id, "latency/median_ms", samples[2])
        client.log_text(run_id, json.dumps({"latency_ms": samples}), "latency_samples.json")
        client.log_text(run_id, sleeper_config(1.0).replace("max_time_s: 0.3", "max_time_s: 5.0"), "config.yaml")
        client.set_terminated(run_id)
        ids.append(run_id)
    console, out = terminal()
    assert run_gate(client, *ids, "5%", console) == 3
    printed = lines(out)
    assert printed[0] == ("", "rows matched by one run on each side") and len(printed) == 3
    assert printed[1][0] == YELLOW and printed[1][1].startswith("cand: 10% quantile ")
    assert "re-measuring" not in out.getvalue() and "re-measured now" not in out.getvalue()
    console, out = terminal()
    run_gate(client, *ids, "5%", console, rerun=True, rerun_time_s=0.3)
    printed = lines(out)
    reason = f"too few samples (5, 5; at least {MIN_SAMPLES} each)"
    assert (
        printed[1][0] == YELLOW
        and printed[1][1].startswith(f"cand: stored runs INCONCLUSIVE ({reason}")
        and printed[1][1].endswith("); re-measuring both now, interleaved")
    ), printed[1]
    remeasured = printed[2][1]
    assert remeasured.startswith("cand: median ") and "median of paired ratios" in remeasured, remeasured
    seconds = float(re.search(r"re-measured now, interleaved: (\d+) rounds, ([0-9.]+) s, cpu", remeasured)[2])  # type: ignore[index]
    assert seconds < 3.5, remeasured  # the 0.3 s asked for (plus its minimum rounds under load), not the runs' 5 s
    assert printed[-1][1].endswith("in 1 compared row(s), threshold 5.0%, at least 10 samples per side")


def test_nothing_matched_lists_both_sides_rows(store_uri: str) -> None:
    """No candidate row has a baseline row's overrides: one red line naming both ids as given (the baseline by a
    prefix of digits) and the basis, then each side's rows (yellow), exit 2."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gate-output")
    candidate = log_sweep(client, experiment, [job("model=alpha width=16", lognormal(2, 12, 5.0)),
                                               job("model=alpha width=32", lognormal(3, 12, 5.0))])  # fmt: skip
    baseline = ""
    for _attempt in range(60):  # a sweep id given by its leading digits (e.g. "42"): a number rich would highlight
        sweep = log_sweep(client, experiment, [job("model=alpha width=1", lognormal(1, 12, 5.0))])
        digits = re.match(r"[0-9]*", sweep)[0]  # type: ignore[index]
        ids = [run.info.run_id for run in client.search_runs([experiment])]
        baseline = digits if digits and sum(i.startswith(digits) for i in ids) == 1 else ""
        if baseline:  # each sweep's id leads with a digit 10 times in 16, so 60 sweeps all missing is ~1e-25
            break
    assert baseline, "no sweep id began with a unique run of digits"
    console, out = terminal()
    assert run_gate(client, baseline, candidate, "5%", console) == 2
    assert lines(out) == [
        (RED, f"no timed runs of {baseline} and {candidate} match by overrides"),
        (YELLOW, "baseline only: alpha-width=1 [model=alpha width=1]"),
        (YELLOW, "candidate only: alpha-width=16 [model=alpha width=16]"),
        (YELLOW, "candidate only: alpha-width=32 [model=alpha width=32]"),
    ]


def test_an_ambiguous_match_is_one_line_on_stderr(store_uri: str, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Two candidate runs with one identity: refused, exit 2, with one line on stderr (a colour terminal 20
    columns wide) naming both runs, its prefix red and nothing else coloured."""
    for name in ("NO_COLOR", "TERM", "COLORTERM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gate-output")
    baseline = log_sweep(client, experiment, [job("model=alpha width=1", lognormal(1, 12, 5.0))])
    candidate = log_sweep(client, experiment, [job("model=alpha width=1", lognormal(2, 12, 5.0)),
                                               job("model=alpha width=1", lognormal(3, 12, 5.0))])  # fmt: skip
    console, out = terminal()
    assert run_gate(client, baseline, candidate, "5%", console) == 2 and out.getvalue() == ""
    err = capsys.readouterr().err
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{candidate}'")
    assert err.count("\n") == 1 and ESCAPE.findall(err) == [RED, RESET], repr(err)
    assert ESCAPE.sub("", err) in (
        f"gflops-track compare: ambiguous match: the candidate has 2 runs with the same identity "
        f"'model=alpha width=1': {', '.join(f'{run.info.run_name} ({run.info.run_id})' for run in order)} — give one "
        "run or sweep per side, the gate will not guess\n"
        for order in (runs, runs[::-1])
    ), repr(err)


def test_an_id_that_names_no_single_run_is_named_by_its_flag(store_uri: str) -> None:
    """A prefix that several run ids start with is refused naming the flag it was given to (--baseline,
    --candidate). 17 runs: two of them share their first hex digit."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gate-output")
    ids = [client.create_run(experiment, run_name=f"r{i}").info.run_id for i in range(17)]
    shared = next(digit for digit in "0123456789abcdef" if sum(i.startswith(digit) for i in ids) > 1)
    unique = ids[0]
    console, _ = terminal()
    with pytest.raises(ValueError, match=f"^--baseline='{shared}' is ambiguous: "):
        run_gate(client, shared, unique, "5%", console)
    with pytest.raises(ValueError, match=f"^--candidate='{shared}' is ambiguous: "):
        run_gate(client, unique, shared, "5%", console)
