"""Credentials never travel in a URI past the entry point: the one path every command's store URI takes.

A password in ``scheme://user:PW@host`` (``tracking.uri=``, ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``) would reach
Hydra's output files, run names and tags, the config artifact, spool files and MLflow's console lines ("View run ...
at: <uri>"). So before MLflow sees the URI, the credentials move to the environment variables their client reads
anyway — ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` for an MLflow server, ``PGUSER``/``PGPASSWORD`` for
PostgreSQL — and the URI keeps only the host. The user is told that the environment is the place for them.
``run`` applies this to its overrides (``app/credentials.py``); ``sync``, ``compare`` and ``reap`` call
``command_store``.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from gflops_track.tracking.store import StoreError, default_store_uri

URI_ENV = "MLFLOW_TRACKING_URI"
URI_FLAG = "--tracking-uri"
CREDENTIAL_ENV = {  # URI scheme prefix -> (user variable, password variable)
    "http": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "postgresql": ("PGUSER", "PGPASSWORD"),
}


def _variables(scheme: str) -> tuple[str, str] | None:
    return next((names for prefix, names in CREDENTIAL_ENV.items() if scheme.startswith(prefix)), None)


def strip_credentials(uri: str, environ: MutableMapping[str, str], key: str = "tracking.uri") -> tuple[str, str | None]:
    """``uri`` without its user and password, which go to the client's environment variables (a value the user set
    there already wins); the second item is a warning when something moved, or an error text naming ``key`` when
    the scheme has no such variables (then the URI is returned unchanged)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri, None
    variables = _variables(parts.scheme)
    if variables is None:
        return uri, (
            f"{key} holds a password for a {parts.scheme}:// store, which gflops-track cannot keep out of its "
            "logs: use a store whose client reads credentials from the environment"
        )
    user_variable, password_variable = variables
    environ.setdefault(user_variable, unquote(parts.username or ""))
    environ.setdefault(password_variable, unquote(parts.password))
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    if parts.scheme.startswith("postgresql") and parts.username:
        netloc = f"{parts.username}@{netloc}"  # a user name is no secret, and the store URI needs it
    warning = (
        f"the tracking URI held a password: it was moved to {password_variable} for this command and is never "
        f"logged; set {user_variable} and {password_variable} in your environment instead of writing them in a URI"
    )
    return urlunsplit(parts._replace(netloc=netloc)), warning


def command_store(
    flag: str | None, launch_dir: Path, environ: MutableMapping[str, str] = os.environ
) -> tuple[str, list[str]]:
    """The store a command (``sync``, ``compare``, ``reap``) reads or writes: ``--tracking-uri``, else
    ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``, with any password moved to the environment first (also in
    ``MLFLOW_TRACKING_URI`` itself, which MLflow reads on its own). Returns (URI, warnings); ``StoreError`` (one line)
    for a password that cannot be moved."""
    warnings: list[str] = []
    cleaned: dict[str, str] = {}
    for key, uri in ((URI_FLAG, flag), (URI_ENV, environ.get(URI_ENV))):
        if not uri:
            continue
        stripped, message = strip_credentials(uri, environ, key)
        if message is not None and stripped == uri:
            raise StoreError(message)
        if message is not None and message not in warnings:
            warnings.append(message)
        cleaned[key] = stripped
    if URI_ENV in cleaned:
        environ[URI_ENV] = cleaned[URI_ENV]
    # from ``environ`` alone: the process's own environment is not the one a caller passed
    return cleaned.get(URI_FLAG) or cleaned.get(URI_ENV) or default_store_uri(launch_dir), warnings
