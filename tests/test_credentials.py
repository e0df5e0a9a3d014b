"""Credentials leave a tracking URI before Hydra or MLflow sees it: every ``tracking.uri`` override, whatever its
Hydra prefix (``+``, ``++``, ``~``), and ``MLFLOW_TRACKING_URI`` lose their user and password to the environment
variables the store's client reads. Unit tests of ``gflops_track.app.credentials`` on a plain dict environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from gflops_track.app.credentials import credentials_to_environment
from gflops_track.tracking.credentials import URI_ENV, command_store, strip_credentials

MLFLOW_USER, MLFLOW_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


@pytest.mark.parametrize("prefix", ["", "+", "++", "~"])
def test_every_hydra_prefix_of_the_override_is_stripped(prefix: str) -> None:
    """``++tracking.uri=`` (force-add) is the same key as ``tracking.uri=``: its password must move too (it would
    otherwise reach the .hydra files, the spool's run.json and the overrides.yaml artifact)."""
    environ: dict[str, str] = {}
    argv = [f"{prefix}tracking.uri=http://alice:Zq-SECRET@host:5000/", "model.planes=32"]
    cleaned, warnings, errors = credentials_to_environment(argv, environ)
    assert cleaned == [f"{prefix}tracking.uri=http://host:5000/", "model.planes=32"]
    assert environ == {MLFLOW_USER: "alice", MLFLOW_PASSWORD: "Zq-SECRET"}
    assert errors == [] and len(warnings) == 1 and "Zq-SECRET" not in warnings[0]
    assert "moved to MLFLOW_TRACKING_PASSWORD" in warnings[0] and "set MLFLOW_TRACKING_USERNAME and" in warnings[0]


def test_other_keys_and_values_without_a_password_are_left_alone() -> None:
    environ: dict[str, str] = {}
    argv = [
        "tracking.uri=http://host:5000",  # no password: nothing to move
        "tracking.urix=http://bob:pw@host",  # another key that merely starts like it
        "model.uri=http://bob:pw@host",  # another key
        "tracking.uri",  # no value
        "Xtracking.uri=http://bob:pw@host",  # only Hydra's + and ~ prefixes are read off a key
        "hydra.run.dir=x=y",
    ]
    assert credentials_to_environment(argv, environ) == (argv, [], [])
    assert environ == {}


def test_quoted_values_and_sweeps_keep_their_quotes_and_commas() -> None:
    """A quoted value keeps its quotes; a sweep (comma-separated URIs) has each URI stripped. The first URI's
    credentials win (the environment variables hold one pair); a repeated warning is given once."""
    environ: dict[str, str] = {}
    argv = ["tracking.uri='http://alice:p1@h1:5000,http://bob:p2@h2'", 'tracking.uri="http://carol:p3@h3"']
    cleaned, warnings, errors = credentials_to_environment(argv, environ)
    assert cleaned == ["tracking.uri='http://h1:5000,http://h2'", 'tracking.uri="http://h3"']
    assert environ == {MLFLOW_USER: "alice", MLFLOW_PASSWORD: "p1"}
    assert len(warnings) == 1 and errors == []
    mismatched = ["tracking.uri='http://alice:p1@h1"]  # an opening quote without its closing one is part of the URI
    assert credentials_to_environment(mismatched, {})[0] == mismatched


def test_a_uri_with_a_query_string_is_split_at_the_first_equals_sign() -> None:
    """``key=value`` splits at the first ``=``: a URI's own ``?a=b`` belongs to the value."""
    environ: dict[str, str] = {}
    cleaned, _, _ = credentials_to_environment(["++tracking.uri=http://alice:pw@host:5000/?x=1&y=2"], environ)
    assert cleaned == ["++tracking.uri=http://host:5000/?x=1&y=2"] and environ[MLFLOW_PASSWORD] == "pw"


def test_the_environment_variable_is_cleaned_too() -> None:
    environ = {URI_ENV: "postgresql://alice:Zq%40pw@db.example:5432/mlflow"}
    cleaned, warnings, errors = credentials_to_environment([], environ)
    assert cleaned == [] and errors == [] and len(warnings) == 1
    assert environ == {
        URI_ENV: "postgresql://alice@db.example:5432/mlflow",  # a PostgreSQL user name is no secret and is needed
        "PGUSER": "alice",
        "PGPASSWORD": "Zq@pw",  # percent-decoded: what the client must send
    }
    assert "moved to PGPASSWORD" in warnings[0]
    empty = {URI_ENV: ""}
    assert credentials_to_environment([], empty) == ([], [], []) and empty == {URI_ENV: ""}


def test_strip_credentials_per_scheme() -> None:
    """http(s) -> MLFLOW_TRACKING_*; postgresql(+driver) -> PG*, keeping the user in the URI; a user already in the
    environment wins; the port stays; no port, no colon."""
    environ = {MLFLOW_USER: "preset"}
    assert strip_credentials("https://al%20ice:p%2Fw@host/path?x=1", environ)[0] == "https://host/path?x=1"
    assert environ == {MLFLOW_USER: "preset", MLFLOW_PASSWORD: "p/w"}
    environ = {}
    uri, warning = strip_credentials("postgresql+psycopg://bob:pw@db:5433/x", environ)
    assert uri == "postgresql+psycopg://bob@db:5433/x" and environ == {"PGUSER": "bob", "PGPASSWORD": "pw"}
    assert warning is not None and "PGUSER and PGPASSWORD" in warning
    environ = {}
    assert strip_credentials("http://:pw@host:8080", environ)[0] == "http://host:8080"
    assert environ == {MLFLOW_USER: "", MLFLOW_PASSWORD: "pw"}
    environ = {}
    assert strip_credentials("postgresql://:pw@db/x", environ)[0] == "postgresql://db/x"  # no user to keep
    assert strip_credentials("sqlite:////tmp/a.db", environ) == ("sqlite:////tmp/a.db", None)
    assert strip_credentials("http://alice:pw@:5000/x", {})[0] == "http://:5000/x"  # no host: none is made up
    assert strip_credentials("http://alice@host", environ) == ("http://alice@host", None)  # a user, no password
    assert environ == {"PGUSER": "", "PGPASSWORD": "pw"}


def test_a_password_for_a_store_without_credential_variables_is_an_error() -> None:
    """mysql:// has no variables gflops-track could move the password to: the URI is left as it was and the caller
    gets an error (not a warning), naming the key and the scheme."""
    environ: dict[str, str] = {}
    uri = "mysql://alice:pw@db/x"
    refusal = (
        "tracking.uri holds a password for a mysql:// store, which gflops-track cannot keep out of its logs: use a "
        "store whose client reads credentials from the environment"
    )
    assert strip_credentials(uri, environ) == (uri, refusal)  # the key named by default: the override's
    cleaned, warnings, errors = credentials_to_environment([f"tracking.uri={uri}"], environ)
    assert cleaned == [f"tracking.uri={uri}"] and warnings == [] and environ == {}
    assert errors == [
        "tracking.uri holds a password for a mysql:// store, which gflops-track cannot keep out of its logs: use a "
        "store whose client reads credentials from the environment"
    ]


def test_an_error_names_the_variable_or_the_override_that_holds_the_password() -> None:
    """The same mysql:// password is refused in ``MLFLOW_TRACKING_URI`` and in ``tracking.uri=``: each error names
    where the password is, so the user knows what to change."""
    uri = "mysql://alice:pw@db/x"
    environ = {URI_ENV: uri}
    assert credentials_to_environment([f"tracking.uri={uri}"], environ)[2] == [
        f"{name} holds a password for a mysql:// store, which gflops-track cannot keep out of its logs: use a store "
        "whose client reads credentials from the environment"
        for name in ("tracking.uri", URI_ENV)
    ]
    assert environ == {URI_ENV: uri}


def test_a_command_store_without_a_password_gives_no_warning(tmp_path: Path) -> None:
    """``sync``/``compare``/``reap``: a URI with no password is used as it is, with no warning; one with a password
    gives its warning once, though the flag and ``MLFLOW_TRACKING_URI`` both held one (the flag wins)."""
    assert command_store("http://host:5000", tmp_path, {URI_ENV: "http://other:5000"}) == ("http://host:5000", [])
    environ = {URI_ENV: "http://bob:Zq-2@other:5000"}
    uri, warnings = command_store("http://alice:Zq-1@host:5000", tmp_path, environ)
    assert uri == "http://host:5000" and len(warnings) == 1 and "Zq-" not in warnings[0]
    assert environ == {URI_ENV: "http://other:5000", MLFLOW_USER: "alice", MLFLOW_PASSWORD: "Zq-1"}
