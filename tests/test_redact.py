"""Credentials in URIs are masked in any text (hostile inputs, by hypothesis), and on the console, including MLflow's
own "View run ... at <uri>" line, which it writes straight to stdout."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import cli_env
from gflops_track.common.redact import (
    MASK,
    MaskingFilter,
    MaskingStream,
    credential_warning,
    install_console_masking,
    mask_credentials,
    mask_record,
    uninstall_console_masking,
)
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
@given(user=USERS, password=st.text(alphabet="0123456789", min_size=1, max_size=12), host=HOSTS, port=PORTS)
@example(user="alice", password="20240117", host="host", port=":5000")  # the case
def test_an_all_digit_password_is_masked_like_any_other(user: str, password: str, host: str, port: str) -> None:
    """``user:20240117@host`` is a password, not a port: only ``host:5000`` with no ``@`` before the path is a port.
    (The strategy above always starts its passwords with "Zq", so it never makes this case.)"""
    masked = mask_credentials(f"http://{user}:{password}@{host}{port}/x")
    assert masked == f"http://{user}:{MASK}@{host}{port}/x"


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
    assert mask_credentials("http://user@host:5000/x") == "http://user@host:5000/x"  # a port is no password
    # an e-mail address as the user name, '@' unencoded: the password still runs to the last '@'
    assert (
        mask_credentials("http://alice@example.com:Zq-pw@host:5000/") == f"http://alice@example.com:{MASK}@host:5000/"
    )
    assert mask_credentials("http://host:5000/path@x") == "http://host:5000/path@x"  # '@' in the path
    assert mask_credentials("http://host:5000/a@b/c") == "http://host:5000/a@b/c"  # the authority ends at the 1st /
    assert mask_credentials("sqlite:////tmp/a:b@c.db") == "sqlite:////tmp/a:b@c.db"  # an empty authority
    assert mask_credentials("https://h/x?token=&a=1") == "https://h/x?token=&a=1"  # an empty value: nothing hidden
    assert mask_credentials("retry with ?token=Zq123&page=2") == f"retry with ?token={MASK}&page=2"  # no scheme
    assert mask_credentials("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert redact_uri("http://alice:p@ss/w:rd@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact_uri("http://alice:s3cret@host:5000/path") == "http://alice:***@host:5000/path"


def test_credential_warning_points_to_the_environment() -> None:
    warning = credential_warning("http://alice:Zq-pw@host:5000")
    assert warning is not None and "Zq-pw" not in warning and "MLFLOW_TRACKING_PASSWORD" in warning
    assert warning == (
        "tracking.uri='http://alice:***@host:5000' holds a credential: it is masked wherever it is shown, but the "
        "place for it is the environment: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
        "MLFLOW_TRACKING_TOKEN"
    )
    assert (credential_warning("https://h/?token=Zq1", key="uri") or "").startswith("uri='https://h/?token=***' holds")
    assert credential_warning("http://host:5000") is None and credential_warning("sqlite:////tmp/a.db") is None


class Terminal(io.StringIO):
    """A stream that says it is a terminal, with an encoding, a file number and an attribute of its own."""

    encoding = "latin-1"  # type: ignore[assignment]
    flushed = 0
    extra = "passed through"

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return 7

    def flush(self) -> None:
        self.flushed += 1


def test_masking_stream_masks_every_write_and_behaves_like_its_stream() -> None:
    terminal = Terminal()
    stream = MaskingStream(terminal)
    text = "see http://bob:Zq-pw@host:5000/x"
    assert stream.write(text) == len(text)  # the caller's length, whatever the mask made of it
    assert terminal.getvalue() == "see http://bob:***@host:5000/x"
    stream.flush()
    assert terminal.flushed == 1 and stream.isatty() and stream.fileno() == 7 and stream.writable()
    assert stream.encoding == "latin-1" and stream.extra == "passed through" and stream.stream is terminal
    assert MaskingStream(object()).encoding == "utf-8"  # type: ignore[arg-type]  # no encoding: UTF-8
    plain = MaskingStream(io.StringIO())
    assert not plain.isatty()


def test_log_records_are_masked_with_their_arguments_and_traceback() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "store at %s failed", ("http://b:Zq-pw@h",), None)
    assert MaskingFilter().filter(record) is True
    assert (record.msg, record.args) == ("store at http://b:***@h failed", ())
    clean = logging.LogRecord("x", logging.INFO, __file__, 1, "nothing to hide %s", ("here",), None)
    assert mask_record(clean) is clean and (clean.msg, clean.args) == ("nothing to hide %s", ("here",))
    try:
        raise RuntimeError("connect to http://b:Zq-pw@h refused")
    except RuntimeError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    mask_record(failed)
    assert failed.exc_text is not None and "http://b:***@h refused" in failed.exc_text and "Zq" not in failed.exc_text
    failed.exc_text = "kept"
    assert mask_record(failed).exc_text == "kept"  # a traceback already formatted is left as it is
    malformed = logging.LogRecord("x", logging.INFO, __file__, 1, "%d apples", ("http://b:Zq-pw@h",), None)
    assert mask_record(malformed) is malformed and malformed.args == ("http://b:Zq-pw@h",)  # logging reports it


def test_console_masking_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """install_console_masking wraps stdout and stderr, masks every new log record and moves the stream handlers
    bound to the original streams (or to sys.__stderr__) onto the wrappers; installing twice wraps once; uninstall
    puts the streams and the record factory back."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    factory = logging.getLogRecordFactory()
    logger = logging.getLogger("gflops-track-test-masking")
    monkeypatch.setattr(logger, "propagate", False)
    on_out, on_real_stderr, elsewhere = (
        logging.StreamHandler(out), logging.StreamHandler(sys.__stderr__), logging.StreamHandler(io.StringIO()),
    )  # fmt: skip
    not_a_stream = logging.NullHandler()
    for handler in (not_a_stream, on_out, on_real_stderr, elsewhere):  # one that is no stream handler first
        logger.addHandler(handler)
    try:
        install_console_masking()
        wrapped_out, wrapped_err = sys.stdout, sys.stderr
        install_console_masking()
        assert sys.stdout is wrapped_out and sys.stderr is wrapped_err  # idempotent
        assert isinstance(wrapped_out, MaskingStream) and wrapped_out.stream is out
        assert isinstance(wrapped_err, MaskingStream) and wrapped_err.stream is err
        assert on_out.stream is wrapped_out and on_real_stderr.stream is wrapped_err
        assert elsewhere.stream is not wrapped_out and elsewhere.stream is not wrapped_err
        print("printed http://bob:Zq-1@h:1/x")
        sys.stderr.write("written http://bob:Zq-2@h\n")
        factory_now = logging.getLogRecordFactory()
        record = factory_now("x", logging.INFO, __file__, 1, "at %s", ("http://b:Zq-3@h",), None, func="f", sinfo="s")
        assert (record.getMessage(), record.funcName, record.stack_info) == ("at http://b:***@h", "f", "s")
    finally:
        uninstall_console_masking()
        for handler in (on_out, on_real_stderr, elsewhere, not_a_stream):
            logger.removeHandler(handler)
    assert sys.stdout is out and sys.stderr is err and logging.getLogRecordFactory() is factory
    assert out.getvalue() == "printed http://bob:***@h:1/x\n" and err.getvalue() == "written http://bob:***@h\n"
    uninstall_console_masking()  # twice is harmless
    assert sys.stdout is out


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
