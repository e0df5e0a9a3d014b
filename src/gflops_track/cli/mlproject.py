"""Entry points for ``mlflow run`` (see MLproject).

Two traps of ``mlflow run`` (mlflow#4390) are undone here rather than passed on to Hydra, which rejects both:
a declared parameter is shell-quoted into *one* argument (``-P overrides="norm_fn=batch batch.size=8"`` arrives as the
single word ``norm_fn=batch batch.size=8``), and an undeclared ``-P key=value`` arrives as ``--key value``.

Where the results go: ``mlflow run`` creates its run before our code starts, in the experiment the user named
(``--experiment-name``/``--experiment-id``, or ``MLFLOW_EXPERIMENT_NAME``/``MLFLOW_EXPERIMENT_ID``), else in
"Default"; an MLproject file cannot name one. When the run is in "Default" and no experiment name was given, the
results go to ``tracking.experiment`` (``gflops-track``) instead: the app makes its own run(s) there, each tagged with
the run ``mlflow run`` made, and that run gets a note and tags pointing at them. A run in an experiment the user chose
is used as it is (and that experiment is marked and described like ours).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Sequence

MLPROJECT_USAGE = "usage: python -m gflops_track.cli.mlproject {main,sweep,compare} [overrides ...]"


def shell_words(words: Sequence[str]) -> list[str]:
    """Each of mlflow's arguments shell-split (``ValueError`` for an unclosed quote)."""
    return [token for word in words for token in shlex.split(word)]


def split_overrides(words: Sequence[str]) -> list[str]:
    """Hydra overrides from mlflow's arguments: each word shell-split, ``--key value`` turned into ``key=value``."""
    tokens = shell_words(words)
    overrides: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.startswith("--") and "=" not in token and index + 1 < len(tokens):
            overrides.append(f"{token[2:]}={tokens[index + 1]}")
            index += 2
        else:
            overrides.append(token)
            index += 1
    return overrides


DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default" experiment
PROJECT_RUN_TAG = "gflops_track.mlflow_run"  # on our run: the run `mlflow run` made (left in "Default")
RESULTS_TAG = "gflops_track.results_runs"  # on the run `mlflow run` made: where its results are
SOURCE_TAGS = (
    "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit", "mlflow.source.git.branch",
    "mlflow.project.entryPoint", "mlflow.project.env", "mlflow.project.backend", "mlflow.user",
)  # fmt: skip
URL_TAGS = ("mlflow.source.name", "mlflow.source.git.repoURL", "mlflow.gitRepoURL")  # may hold a token


def configured_experiment(overrides: Sequence[str]) -> str | None:
    """``tracking.experiment`` as the overrides set it (the last one wins), else the config's default; None when an
    override does not parse (the app's preflight names it, exit 2)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from gflops_track.app.schema import TrackingConfig

    name = TrackingConfig.experiment
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return None
    for override in parsed:
        if override.key_or_group == "tracking.experiment" and not override.is_sweep_override():
            name = str(override.value())
    return name


def redirect_from_default(overrides: Sequence[str]) -> tuple[str, str] | None:
    """(uri, run id of the run ``mlflow run`` made) when that run is in "Default" and the user named no experiment:
    then ``MLFLOW_RUN_ID`` is dropped, so the app makes its run(s) in ``tracking.experiment``. Otherwise None, and the
    user's experiment is marked and described; a credential in the run's source URLs is masked either way."""
    run_id, uri = os.environ.get("MLFLOW_RUN_ID", ""), os.environ.get("MLFLOW_TRACKING_URI", "")
    if not run_id or not uri:
        return None
    from gflops_track.common.redact import mask_credentials
    from gflops_track.tracking.store import connect, mark_experiment

    client = connect(uri)
    run = client.get_run(run_id)
    for key in URL_TAGS:
        value = run.data.tags.get(key)
        if value and mask_credentials(value) != value:
            client.set_tag(run_id, key, mask_credentials(value))
    experiment = client.get_experiment(run.info.experiment_id)
    named = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    configured = configured_experiment(overrides)
    if configured is None:
        return None  # a bad override: the app refuses the command line before anything is written
    if run.info.experiment_id != DEFAULT_EXPERIMENT_ID or named or configured == experiment.name:
        mark_experiment(client, experiment.experiment_id, experiment.tags)
        return None
    os.environ.pop("MLFLOW_RUN_ID")
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    return uri, run_id


def link_results(uri: str, project_run_id: str, experiment: str, since_ms: int) -> None:
    """Point the run ``mlflow run`` made at the top-level run(s) this process made in ``experiment`` since
    ``since_ms`` (found by host and PID), and those at it; give them the project's source tags."""
    from gflops_track.common.names import PARENT_TAG
    from gflops_track.common.redact import mask_credentials
    from gflops_track.tracking.reap import HOST_TAG, PID_TAG
    from gflops_track.tracking.store import NOTE_TAG, connect, search_all_runs

    client = connect(uri)
    target = client.get_experiment_by_name(experiment)
    if target is None:
        return
    runs = search_all_runs(
        client,
        [target.experiment_id],
        filter_string=f"tags.`{HOST_TAG}` = '{socket.gethostname()}' and tags.`{PID_TAG}` = '{os.getpid()}' "
        f"and attributes.start_time >= {since_ms}",
    )
    ours = [run for run in runs if PARENT_TAG not in run.data.tags]
    project = client.get_run(project_run_id).data.tags
    for run in ours:
        client.set_tag(run.info.run_id, PROJECT_RUN_TAG, project_run_id)
        for key in SOURCE_TAGS:
            if project.get(key):
                client.set_tag(run.info.run_id, key, mask_credentials(project[key]))
    listed = ", ".join(f"`{run.info.run_name}` ({run.info.run_id})" for run in ours) or "none found"
    client.set_tag(project_run_id, RESULTS_TAG, ",".join(run.info.run_id for run in ours))
    client.set_tag(
        project_run_id,
        NOTE_TAG,
        f"The results of this `mlflow run` are in experiment **{experiment}**: run {listed}. No experiment was "
        f"named, so MLflow put this run in Default; `mlflow run . --experiment-name {experiment}` logs into the "
        "run MLflow makes instead.",
    )


def split_or_exit(words: Sequence[str], split: Callable[[Sequence[str]], list[str]]) -> list[str]:
    """``split(words)``, or exit 2 with one line when a word cannot be shell-split (an unclosed quote)."""
    try:
        return split(words)
    except ValueError as error:
        from gflops_track.app.channels import EXIT_CONFIG_ERROR

        sys.stderr.write(
            f"gflops-track: invalid parameter: {' '.join(words)!r} cannot be split into words ({error}): close "
            "every quote, e.g. -P overrides=\"tracking.run_name='a b'\"\n"
        )
        sys.exit(EXIT_CONFIG_ERROR)


def main(argv: Sequence[str] | None = None) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] not in ("main", "sweep", "compare"):
        sys.stderr.write(MLPROJECT_USAGE + "\n")
        sys.exit(2)
    entry, rest = words[0], words[1:]
    if entry == "compare":
        from gflops_track.cli.compare import main as compare_main
        from gflops_track.common.redact import install_console_masking

        install_console_masking()
        sys.exit(compare_main(split_or_exit(rest, shell_words)))
    from gflops_track.cli.run import main as app_main

    overrides = split_or_exit(rest, split_overrides)
    redirect = redirect_from_default(overrides)
    since_ms = int(time.time() * 1000)
    sys.argv = ["gflops_track", *(["-m"] if entry == "sweep" else []), *overrides]
    try:
        app_main()
    finally:
        if redirect is not None:
            try:
                link_results(*redirect, configured_experiment(overrides) or "", since_ms)
            except Exception as error:  # the results are safe; only the pointer to them is missing
                sys.stderr.write(f"gflops-track: could not link the mlflow run to its results: {error!r}\n")


if __name__ == "__main__":
    main()
