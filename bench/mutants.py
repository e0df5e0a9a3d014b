"""Mutation testing of the rules users rely on: does a fast test fail when a rule breaks? Run by hand (not in CI).

    python bench/mutants.py                      # every module of MODULES, one after the other
    python bench/mutants.py redact gate          # the modules whose path contains one of these words
    python bench/mutants.py --report             # the last run's results again (after editing EQUIVALENT)

For each module of ``MODULES`` (a source file -> the fast test files that cover it), mutmut 3 makes small bugs, one
at a time (a comparison flipped, a number changed, a condition dropped, an argument left out, ...), and runs the
tests of those files that execute the mutated function, ``-m "not slow and not cuda"``, in one process (each mutant
forked from a server that collected the tests; never xdist). A mutant is *killed* when a test fails, *timed out*
when the tests ran past 8x their own time (a loop that no longer ends: caught too), *survived* when every test
passed. A survivor that changes nothing a user can observe is listed, with the reason, in ``EQUIVALENT``
(bench/equivalent_mutants.toml) and counted as equivalent; one that changes only what a GPU or another operating
system runs is listed there too and counted apart; every other survivor is printed with its diff. Target: at least
90% of each module's mutants caught (of those this machine can run), every survivor explained. Exit 1 otherwise.

Why mutmut 3 (the dev extra's ``mutmut>=3.8,<4``), not cosmic-ray or pytest-gremlins: mutmut 3 first records which
tests call which function, then runs for each mutant only the tests that reach its function, with every mutant of a
module compiled in at once (a trampoline picks the active one), so no file is rewritten and nothing is re-imported
per mutant; that is what lets a module's mutants run in minutes on a 2-core machine. cosmic-ray runs the whole test
command per mutant from a session database (hours here, with torch's import per mutant); pytest-gremlins is young
and little used. mutmut is also a plain pip install from the index with no service or database to set up.

Each module runs in its own folder, ``mutants/<module>/`` under the repository root (git-ignored; pytest and ruff
never look there), which holds links to ``src``/``tests`` and the configuration mutmut reads, so modules never mix
their results. ``--jobs`` forks that many mutants at once (default 1: the machine is shared). The table printed at
the end is the one in docs/benchmarks.md ("Mutation testing").
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# module (path from the repository root) -> the test files whose fast tests cover it. Update when a module moves.
MODULES: dict[str, tuple[str, ...]] = {
    "src/gflops_track/counting/rules.py": ("tests/test_rules.py", "tests/test_rule_functions.py"),
    "src/gflops_track/counting/training.py": ("tests/test_training_step.py", "tests/test_training_count.py"),
    "src/gflops_track/compare/gate.py": ("tests/test_gate.py", "tests/test_gate_verdicts.py"),
    "src/gflops_track/timing/engine.py": ("tests/test_timing.py", "tests/test_timing_rules.py"),
    "src/gflops_track/peaks/report.py": ("tests/test_peak_report.py",),
    "src/gflops_track/app/credentials.py": ("tests/test_credentials.py",),
    "src/gflops_track/tracking/credentials.py": ("tests/test_credentials.py", "tests/test_store.py"),
    "src/gflops_track/common/redact.py": ("tests/test_redact.py",),
    "src/gflops_track/tracking/reap.py": ("tests/test_reap.py",),
    "src/gflops_track/tracking/spool.py": ("tests/test_spool.py",),  # test_sync.py: the command, slower
    "src/gflops_track/compare/render.py": ("tests/test_render.py",),  # test_table_widths.py: the CLI, slow
    "src/gflops_track/app/channels.py": ("tests/test_outcomes.py",),
    "src/gflops_track/cli/compare.py": ("tests/test_gate_exit_codes.py", "tests/test_gate_output.py"),
}
# module -> the only functions mutated in it ("name" or "Class.method"): the rule itself, where the rest of the module
# is plumbing (argument parsing, printing, threads, Hydra's callbacks) or, for the counting rules, where a run of every
# rule takes longer than a working session on the 2-core machine; every other module is mutated whole. Widen a list
# (or delete it) for a longer run.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    # the matrix products with a bias (a Linear's addmm) and their alpha/beta scaling; every rule's mutants take about
    # 10 s each against test_rules.py here (808: over two hours): widen this list for a longer session
    "src/gflops_track/counting/rules.py": ("_scaled_extra", "addmm", "baddbmm"),
    # the backward count: which phase and which layer each op is filed under, and the phases' sums (the rest is
    # input checks, the loss functions and the layer table's rows)
    "src/gflops_track/counting/training.py": (
        "_TrainingMode._current", "_TrainingMode._enter_module", "_TrainingMode._leave_module", "_step",
        "count_training_cost",
    ),
    "src/gflops_track/compare/gate.py": ("judge", "_interval", "measured", "pair_rows", "_by_identity", "exit_code"),
    # stop rules: settling, warm-up and adaptive samples under the bound (_measure, which applies them and holds
    # min_repeats and time_bound_hit, is 236 mutants more, 11.3 min here, with 66 survivors not yet examined)
    "src/gflops_track/timing/engine.py": ("_settled", "_warmup", "_adaptive_samples"),
    "src/gflops_track/tracking/credentials.py": ("strip_credentials", "command_store"),
    "src/gflops_track/tracking/reap.py": ("seen_from_here", "process_of", "_number", "judge", "parse_duration"),
    "src/gflops_track/tracking/spool.py": (  # sync's idempotency: find, complete or recreate, never twice
        "Uploader._existing", "Uploader._stand_in", "Uploader.parent_id", "Uploader._synced",
        "Uploader._upload_locked",
    ),
    "src/gflops_track/compare/render.py": ("column_widths", "natural_width", "fit_columns", "ComparisonTable._keys",
                                           "ComparisonTable.__rich_console__"),  # table fitting
    "src/gflops_track/app/channels.py": ("OutcomeLedger.exit_code",),  # the command's exit code
    "src/gflops_track/cli/compare.py": ("run_gate",),  # the gate's exit codes
}  # fmt: skip
FAST = "not slow and not cuda"
ALSO_COPY = ("conf", "docs", "README.md")  # what tests read besides src/ and tests/
ROOT = Path(__file__).resolve().parents[1]  # the checkout this script belongs to
WORK = ROOT / "mutants"
EQUIVALENT = ROOT / "bench" / "equivalent_mutants.toml"
TARGET = 0.90
CLASS_SEPARATOR = "\u01c1"  # mutmut names a method's mutants x<sep>Class<sep>method__mutmut_N
KILLED, TIMEOUT, SURVIVED, EQUIVALENT_KIND, ELSEWHERE = "killed", "timed out", "survived", "equivalent", "elsewhere"


def module_name(path: str) -> str:
    """``src/gflops_track/compare/gate.py`` -> ``gflops_track.compare.gate`` (also the work folder's name)."""
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def _toml_list(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


def prepare(module: str, tests: tuple[str, ...]) -> Path:
    """A fresh work folder for ``module``: links to the checkout's files and a pyproject.toml holding mutmut's
    configuration and pytest's options (no xdist, no cache)."""
    folder = WORK / module_name(module)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("src", "tests", *ALSO_COPY):
        (folder / name).symlink_to(ROOT / name)
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    lines = [
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {_toml_list([module])}",
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}",
        f"pytest_add_cli_args = {_toml_list(['-m', FAST, '-p', 'no:cacheprovider'])}",
        f"also_copy = {_toml_list(ALSO_COPY)}",
        "use_git_change_detection = false",
        # a mutant that loops (a clock that never reaches its bound) is stopped after 8x the time its tests took
        # (mutmut's default, 15x, costs minutes per such mutant here)
        "timeout_multiplier = 8.0",
        # torch's OpenMP pool does not survive a fork from a process that used it: every mutant is forked from a
        # server that collected the tests (imported them) but ran none
        'process_isolation = "forkserver"',
        "",
        "[tool.pytest.ini_options]",
        'addopts = "-p no:xdist"',
        f"markers = {_toml_list(pytest_options.get('markers', []))}",
        f"filterwarnings = {_toml_list(pytest_options.get('filterwarnings', []))}",
        "",
    ]
    (folder / "pyproject.toml").write_text("\n".join(lines))
    return folder


def patterns(module: str) -> list[str]:
    """mutmut's names of the mutants to run in ``module`` (glob patterns; all when FUNCTIONS does not name it)."""
    functions = FUNCTIONS.get(module)
    if not functions:
        return [f"{module_name(module)}.*"]
    mangled = [CLASS_SEPARATOR.join(["x", *name.split(".")]) if "." in name else f"x_{name}" for name in functions]
    return [f"{module_name(module)}.{name}__mutmut_*" for name in mangled]


def run(folder: Path, module: str, jobs: int) -> float:
    """``mutmut run`` in ``folder`` (its output in ``mutmut.log``); the wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # subprocesses the tests start import this checkout
    env.pop("MUTANT_UNDER_TEST", None)
    started = time.monotonic()
    with (folder / "mutmut.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs),
             *(patterns(module) if module in FUNCTIONS else [])],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait()
        finally:  # interrupted: mutmut's fork server and the mutant it runs go too (its own session)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    if code != 0:
        tail = (folder / "mutmut.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"mutmut failed in {folder} (exit {code}):\n{tail}")
    return time.monotonic() - started


def diff(folder: Path, module: str, mutant: str) -> str:
    """The mutant's diff, as ``mutmut show`` prints it (mutmut reads its files relative to the working directory)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    here = Path.cwd()
    os.chdir(folder)
    try:
        return get_diff_for_mutant(mutant, path=module)
    finally:
        os.chdir(here)


def change(diff_text: str) -> str:
    """What a mutant changed: its diff's - and + lines, stripped (stable while the line itself does not change)."""
    lines = diff_text.splitlines()
    return "\n".join(
        f"{line[0]} {line[1:].strip()}"
        for line in lines
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))
    )


def function_of(mutant: str) -> str:
    """``gflops_track.redact.x__mask_userinfo__mutmut_3`` -> ``x__mask_userinfo`` (mutmut's mangled name)."""
    return mutant.rpartition("__mutmut_")[0].rpartition(".")[2]


def load_explained() -> list[dict[str, str]]:
    """EQUIVALENT's entries, each with its ``reason`` (given, or named by ``why`` from the file's [reasons]) and
    its ``kind``: "equivalent", or "elsewhere" when its reason is one of the file's ``elsewhere`` list (code only a
    GPU or another operating system runs)."""
    if not EQUIVALENT.is_file():
        return []
    data = tomllib.loads(EQUIVALENT.read_text())
    reasons, elsewhere = data.get("reasons", {}), set(data.get("elsewhere", []))
    return [
        {
            **entry,
            "reason": entry.get("reason") or reasons[entry["why"]],
            "kind": ELSEWHERE if entry.get("why") in elsewhere else EQUIVALENT_KIND,
        }
        for entry in data.get("mutant", [])
    ]


@dataclass
class Outcome:
    """One module's mutants, counted by what became of them."""

    module: str
    counts: Counter[str] = field(default_factory=Counter)
    survivors: list[tuple[str, str]] = field(default_factory=list)  # (mutant and status, diff): unexplained
    explained: list[tuple[str, str, str]] = field(default_factory=list)  # (mutant, kind, reason)
    seconds: float | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def score(self) -> float:
        """Caught (killed or timed out) / the mutants this machine can run (all but those only elsewhere)."""
        return score(self.counts)


def score(counts: Counter[str]) -> float:
    runnable = sum(counts.values()) - counts[ELSEWHERE]
    return (counts[KILLED] + counts[TIMEOUT]) / runnable if runnable else 0.0


def results(module: str, folder: Path, explained: list[dict[str, str]]) -> Outcome:
    """Read mutmut's results for ``module``: each mutant killed, timed out, explained (EQUIVALENT) or survived."""
    from mutmut.stats import status_by_exit_code

    meta = folder / "mutants" / f"{module}.meta"
    outcome = Outcome(module)
    if not meta.is_file():
        return outcome
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    known = [entry for entry in explained if entry["module"] == module]
    wanted = patterns(module)
    chosen = {mutant: code for mutant, code in codes.items() if any(fnmatch.fnmatch(mutant, p) for p in wanted)}
    for mutant, code in sorted(chosen.items(), key=lambda item: _natural(item[0])):
        status = status_by_exit_code[code]
        if status in ("killed", "timeout"):
            outcome.counts[KILLED if status == "killed" else TIMEOUT] += 1
            continue
        text = diff(folder, module, mutant)
        what = change(text)
        entry = next((e for e in known if e["function"] == function_of(mutant) and e["change"].strip() == what), None)
        if entry is not None:
            entry["matched"] = "yes"
            outcome.counts[entry["kind"]] += 1
            outcome.explained.append((mutant, entry["kind"], entry["reason"]))
            continue
        outcome.counts[SURVIVED] += 1
        outcome.survivors.append((f"{mutant} ({status})", text))
    return outcome


def _natural(name: str) -> tuple[str, int]:
    function, _, number = name.rpartition("__mutmut_")
    return function, int(number) if number.isdigit() else 0


def table(outcomes: list[Outcome]) -> str:
    """The summary as Markdown: one row per module, then all of them."""
    lines = [
        "| module | mutants | killed | timed out | equivalent | GPU or other OS only | survived | caught |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    total = Counter[str]()
    for outcome in outcomes:
        total.update(outcome.counts)
    for name, counts in [*((o.module.removeprefix("src/gflops_track/"), o.counts) for o in outcomes), ("all", total)]:
        lines.append(
            f"| {name} | {sum(counts.values())} | {counts[KILLED]} | {counts[TIMEOUT]} | {counts[EQUIVALENT_KIND]} | "
            f"{counts[ELSEWHERE]} | {counts[SURVIVED]} | {score(counts):.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("modules", nargs="*", help="words picking modules of MODULES by path (default: all)")
    cli.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    cli.add_argument("--report", action="store_true", help="no run: report the results already in mutants/")
    cli.add_argument("--explained", action="store_true", help="also list the equivalent mutants and why")
    args = cli.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so run() ends mutmut's processes too
    chosen = {m: t for m, t in MODULES.items() if not args.modules or any(word in m for word in args.modules)}
    if not chosen:
        cli.error(f"no module of MODULES matches {args.modules}: {', '.join(MODULES)}")
    missing = [path for m, t in chosen.items() for path in (m, *t) if not (ROOT / path).is_file()]
    if missing:
        cli.error(f"MODULES names files this checkout does not have (moved?): {', '.join(missing)}")
    explained = load_explained()
    outcomes = []
    for module, tests in chosen.items():
        name = module_name(module)
        seconds = None
        if not args.report:
            print(f"{name}: mutating, testing with {', '.join(tests)} ...", flush=True)
            seconds = run(prepare(module, tests), module, args.jobs)
        outcome = results(module, WORK / name, explained)
        outcome.seconds = seconds
        outcomes.append(outcome)
        c = outcome.counts
        took = f" in {seconds / 60:.1f} min" if seconds is not None else ""
        print(
            f"{name}: {outcome.total} mutants{took}: {c[KILLED]} killed, {c[TIMEOUT]} timed out, {c[EQUIVALENT_KIND]} "
            f"equivalent, {c[ELSEWHERE]} only a GPU or another OS runs, {c[SURVIVED]} survived: "
            f"{outcome.score:.1%} caught",
            flush=True,
        )
        for mutant, text in outcome.survivors:
            print(f"\n  SURVIVED {mutant}\n" + "\n".join(f"    {line}" for line in text.splitlines()))
        if args.explained:
            for mutant, kind, reason in outcome.explained:
                print(f"  {kind}: {mutant}: {reason}")
        print(flush=True)
    print(table(outcomes))
    stale = [  # entries of the functions this run mutated that explained none of its survivors
        e for e in explained
        if e["module"] in chosen and "matched" not in e
        and any(fnmatch.fnmatch(f"{module_name(e['module'])}.{e['function']}__mutmut_1", p)
                for p in patterns(e["module"]))
    ]  # fmt: skip
    for entry in stale:  # its line moved or changed, or a test kills it now: delete it from EQUIVALENT
        print(f"stale entry of {EQUIVALENT.name}: {entry['module']} {entry['function']}:{entry['change']}")
    unexplained = sum(len(o.survivors) for o in outcomes)
    below = [o.module for o in outcomes if o.score < TARGET]
    print(f"\n{unexplained} survivor(s) unexplained; below {TARGET:.0%} caught: {', '.join(below) or 'none'}")
    return 1 if unexplained or below else 0


if __name__ == "__main__":
    sys.exit(main())
