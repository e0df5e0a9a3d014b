"""Credentials out of ``run``'s command line: every ``tracking.uri`` override and ``MLFLOW_TRACKING_URI`` goes
through ``gflops_track.tracking.credentials`` before Hydra or MLflow sees it (the one path every command takes)."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

from gflops_track.tracking.credentials import URI_ENV, strip_credentials

URI_KEY = "tracking.uri"


def credentials_to_environment(
    argv: Sequence[str], environ: MutableMapping[str, str]
) -> tuple[list[str], list[str], list[str]]:
    """The command line with every ``tracking.uri`` override stripped of credentials, ``MLFLOW_TRACKING_URI``
    likewise; returns (argv, warnings, errors)."""
    warnings: list[str] = []
    errors: list[str] = []

    def clean(uri: str, key: str = URI_KEY) -> str:
        stripped, message = strip_credentials(uri, environ, key)
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
        environ[URI_ENV] = clean(environ[URI_ENV], URI_ENV)
    return cleaned, list(dict.fromkeys(warnings)), list(dict.fromkeys(errors))
