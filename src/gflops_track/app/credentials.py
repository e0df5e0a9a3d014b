"""Credentials never travel in a URI past the entry point.

A password in ``tracking.uri=scheme://user:PW@host`` (an override) or in ``MLFLOW_TRACKING_URI`` would reach Hydra's
output files, the sweep's run name and tags, the config artifact and MLflow's console lines. So before Hydra or
MLflow sees the command line, the credentials move to the environment variables their client reads anyway —
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` for an MLflow server, ``PGUSER``/``PGPASSWORD`` for
PostgreSQL — and the URI keeps only the host. The user is told that the environment is the place for them.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

URI_KEY = "tracking.uri"
URI_ENV = "MLFLOW_TRACKING_URI"
CREDENTIAL_ENV = {  # URI scheme prefix -> (user variable, password variable)
    "http": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "postgresql": ("PGUSER", "PGPASSWORD"),
}


def _variables(scheme: str) -> tuple[str, str] | None:
    return next((names for prefix, names in CREDENTIAL_ENV.items() if scheme.startswith(prefix)), None)


def strip_credentials(uri: str, environ: MutableMapping[str, str]) -> tuple[str, str | None]:
    """``uri`` without its user and password, which go to the client's environment variables (a value the user set
    there already wins); the second item is a warning when something moved, or an error text when the scheme has no
    such variables (then the URI is returned unchanged)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri, None
    variables = _variables(parts.scheme)
    if variables is None:
        return uri, (
            f"{URI_KEY} holds a password for a {parts.scheme}:// store, which gflops-track cannot keep out of its "
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


def credentials_to_environment(
    argv: Sequence[str], environ: MutableMapping[str, str]
) -> tuple[list[str], list[str], list[str]]:
    """The command line with every ``tracking.uri`` override stripped of credentials, ``MLFLOW_TRACKING_URI``
    likewise; returns (argv, warnings, errors)."""
    warnings: list[str] = []
    errors: list[str] = []

    def clean(uri: str) -> str:
        stripped, message = strip_credentials(uri, environ)
        if message is not None:
            (warnings if stripped != uri else errors).append(message)
        return stripped

    cleaned = []
    for item in argv:
        key, separator, value = item.partition("=")
        if separator and key.lstrip("+~") == URI_KEY:
            quote = value[0] if value[:1] in ("'", '"') and value[-1:] == value[:1] else ""
            inner = value[1:-1] if quote else value
            item = f"{key}={quote}{','.join(clean(uri) for uri in inner.split(','))}{quote}"
        cleaned.append(item)
    if environ.get(URI_ENV):
        environ[URI_ENV] = clean(environ[URI_ENV])
    return cleaned, list(dict.fromkeys(warnings)), list(dict.fromkeys(errors))
