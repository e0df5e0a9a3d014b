"""Credentials in URIs are masked in any text (hostile inputs, by hypothesis), and on the console, including MLflow's
own "View run ... at <uri>" line, which it writes straight to stdout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cli_env
from gflops_track.common.redact import MASK, credential_warning, mask_credentials
from gflops_track.tracking.store import redact_uri

# the password carries a marker no other part can contain, so "the password is gone" is exact
SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY0123456789-_."  # no "Z": the password's marker
PASSWORD_CHARS = SAFE + "!$&()*+,;=:@/?#%~[]"
SCHEMES = st.sampled_from(["http", "https", "postgresql", "mysql+pymysql", "s3", "git+ssh"])
USERS = st.text(alphabet=SAFE, min_size=1, max_size=12)
PASSWORDS = st.text(alphabet=PASSWORD_CHARS, min_size=0, max_size=24).map(lambda tail: "Zq" + tail)
HOSTS = st.text(alphabet=SAFE, min_size=1, max_size=20)
PORTS = st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}"))
PATHS = st.text(alphabet=SAFE + "/", max_size=20).map(lambda path: "/" + path if path else "")
AROUND = st.text(alphabet=SAFE + " \t\n=[]()'\",:", max_size=30)


@settings(max_examples=400, deadline=None)
@given(before=AROUND, scheme=SCHEMES, user=USERS, password=PASSWORDS, host=HOSTS, port=PORTS, path=PATHS, after=AROUND)
def test_uri_password_never_survives(
    before: str, scheme: str, user: str, password: str, host: str, port: str, path: str, after: str
) -> None:
    uri = f"{scheme}://{user}:{password}@{host}{port}{path}"
    text = f"{before} {uri} {after}"
    masked = mask_credentials(text)
    assert "Zq" not in masked, masked  # the password, wherever it sits
    assert f"{scheme}://{user}:{MASK}@" in masked  # the user name stays readable
    assert mask_credentials(masked) == masked  # idempotent: masking twice changes nothing


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["token", "access_token", "X-Amz-Signature", "sig", "password", "api_key", "client_secret"]),
    value=st.text(alphabet=SAFE + "%+/", min_size=1, max_size=40).map(lambda v: "Zq" + v),
    separator=st.sampled_from(["?", "&"]),
)
def test_credential_query_values_never_survive(key: str, value: str, separator: str) -> None:
    text = f"see https://store.example/api/x?a=1{separator if separator == '&' else '&'}{key}={value}&b=2 for details"
    masked = mask_credentials(text)
    assert "Zq" not in masked and f"{key}={MASK}&b=2" in masked


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80).filter(lambda t: "://" not in t and not any(c in t for c in "?&;")))
def test_text_without_uris_or_queries_is_unchanged(text: str) -> None:
    assert mask_credentials(text) == text


def test_readable_uris_stay_readable() -> None:
    assert mask_credentials("postgresql://user@host/db") == "postgresql://user@host/db"  # no password
    assert mask_credentials("http://host:5000/path@x") == "http://host:5000/path@x"  # '@' in the path
    assert mask_credentials("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert redact_uri("http://alice:p@ss/w:rd@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact_uri("http://alice:s3cret@host:5000/path") == "http://alice:***@host:5000/path"


def test_credential_warning_points_to_the_environment() -> None:
    warning = credential_warning("http://alice:Zq-pw@host:5000")
    assert warning is not None and "Zq-pw" not in warning and "MLFLOW_TRACKING_PASSWORD" in warning
    assert "tracking.uri='http://alice:***@host:5000'" in warning
    assert credential_warning("http://host:5000") is None and credential_warning("sqlite:////tmp/a.db") is None


def test_console_masking_catches_mlflows_own_view_run_line(tmp_path: Path) -> None:
    """MLflow prints "View run <name> at: <tracking uri>/#/..." to stdout when a run on a server ends, with the
    password that is in the URI. A real MLflow server, a client pointed at it with credentials in the URI."""
    from test_team import Server, free_port

    server = Server(tmp_path, free_port()).start()
    password = "Zq-hunter2-in-uri"
    script = textwrap.dedent(
        f"""
        import logging, sys
        from gflops_track.common.redact import install_console_masking
        install_console_masking()
        from mlflow.tracking import MlflowClient
        uri = "http://bob:{password}@127.0.0.1:{server.port}"
        client = MlflowClient(uri)
        experiment = client.create_experiment("masking")
        run = client.create_run(experiment, run_name="masked-run")
        client.set_terminated(run.info.run_id)
        logging.getLogger("mlflow").warning("store at %s failed", uri)
        print("rich or plain, the same:", uri)
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=300
        )
    finally:
        server.stop()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "View run masked-run at: http://bob:***@127.0.0.1" in done.stdout  # MLflow's line, masked
    assert "store at http://bob:***@127.0.0.1" in done.stderr and "the same: http://bob:***@" in done.stdout
    assert password not in output
