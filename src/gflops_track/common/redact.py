"""Credentials never leave the process in clear: one function masks them in any text, one hook masks the console.

``mask_credentials`` is the boundary: every run name, tag, artifact text, spool file and console line that may hold
a URI goes through it. It hides the password of ``scheme://user:PASSWORD@host`` (also when the password holds
``@``, ``/``, ``:`` or ``?`` unencoded) and the value of credential-like query parameters (``?token=``,
``access_token=``, ``X-Amz-Signature=``, ``sig=``, ``password=``, ``api_key=``...). User names stay readable.
Credentials belong in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN, never in a URI.

Standard library only: the core may import this module.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
from typing import Any, TextIO

MASK = "***"

# a URI token: scheme "://" then everything up to whitespace, a quote, or angle brackets
_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>`]*)")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:[\w.\-]*token|[\w.\-]*password|passwd|pwd|[\w.\-]*secret|[\w.\-]*signature|sig|"
    r"api[_\-]?key|apikey|key|[\w.\-]*credentials?|auth|authorization|code)=)(?P<value>[^&#;\s'\"<>`]*)",
    re.IGNORECASE,
)


def _mask_userinfo(rest: str) -> str:
    """``user:pw@host/path`` -> ``user:***@host/path``, ``rest`` being what follows ``scheme://``.

    A password may hold ``@``, ``/``, ``:``, ``?`` or ``#`` unencoded, so the password runs from the first ``:`` of
    the user info to the token's *last* ``@`` (on the safe side: an ``@`` further on in the path is masked with it).
    ``host:5000/...@x`` (a port, no user info) and ``user@host`` (no password) are left as they are."""
    if "@" not in rest:
        return rest
    authority = rest[: min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))]
    userinfo = authority.rsplit("@", 1)[0] if "@" in authority else authority
    user, colon, after = userinfo.partition(":")
    if not colon or ("@" not in authority and after.isdigit()):
        return rest
    return f"{user}:{MASK}@{rest.rsplit('@', 1)[1]}"


def mask_credentials(text: str) -> str:
    """``text`` with every URI password and credential-like query value replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text
    text = _URI.sub(lambda m: m.group("scheme") + _mask_userinfo(m.group("rest")), text)
    return _QUERY_SECRET.sub(lambda m: m.group("key") + (MASK if m.group("value") else ""), text)


def credential_warning(uri: str, key: str = "tracking.uri") -> str | None:
    """One line telling the user to move credentials out of a URI into the environment, or None when it holds
    none."""
    if mask_credentials(uri) == uri:
        return None
    return (
        f"{key}={mask_credentials(uri)!r} holds a credential: it is masked wherever it is shown, but the place for it "
        "is the environment: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
    )


class MaskingStream(io.TextIOBase):
    """A text stream that masks credentials in every write before passing it on (MLflow writes its
    "View run ... at: <uri>" line straight to ``sys.stdout``, so a logging filter alone cannot catch it)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(mask_credentials(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class MaskingFilter(logging.Filter):
    """Masks credentials in a log record's message (arguments merged in) and in its traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error handling
        return record
    masked = mask_credentials(message)
    if masked != message:
        record.msg, record.args = masked, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = mask_credentials(logging.Formatter().formatException(record.exc_info))
    return record


_installed = threading.Lock()
_state: dict[str, Any] = {}


def install_console_masking() -> None:
    """Mask credentials in everything this process prints: ``sys.stdout``/``sys.stderr`` are wrapped, every log
    record is masked when it is created, and handlers already bound to the original streams write through the
    wrappers. Idempotent; call once at start-up, before anything may print a URI."""
    with _installed:
        if _state:
            return
        originals = {"stdout": sys.stdout, "stderr": sys.stderr}
        wrappers = {name: MaskingStream(stream) for name, stream in originals.items()}
        sys.stdout, sys.stderr = wrappers["stdout"], wrappers["stderr"]
        previous_factory = logging.getLogRecordFactory()

        def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return mask_record(previous_factory(*args, **kwargs))

        logging.setLogRecordFactory(masked_record)
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for logger in loggers:
            for handler in getattr(logger, "handlers", []):
                if not isinstance(handler, logging.StreamHandler):
                    continue
                for name, original in originals.items():
                    if handler.stream is original or handler.stream is getattr(sys, f"__{name}__"):
                        handler.setStream(wrappers[name])
        _state.update(originals=originals, factory=previous_factory)


def uninstall_console_masking() -> None:
    """Undo ``install_console_masking`` (for tests and embedding)."""
    with _installed:
        if not _state:
            return
        sys.stdout, sys.stderr = _state["originals"]["stdout"], _state["originals"]["stderr"]
        logging.setLogRecordFactory(_state["factory"])
        _state.clear()
