"""Where a study's MLflow store is, and whether it can be used: URI resolution, store and server checks.

Only checks and names here; opening and finishing runs is `search.tracking`'s job.
Everything runs before Ray starts, so a mistyped URI or an unreachable server costs seconds.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    """MLflow's convention: the flag, else MLFLOW_TRACKING_URI, else ./mlflow.db.

    A relative SQLite store is made absolute, so Ray workers in other directories hit the same file.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def ui_command(tracking_uri: str, mlflow_executable: str = "mlflow") -> str:
    """The exact command a user runs to browse this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"{mlflow_executable} ui --backend-store-uri {tracking_uri}"


# Stores that MLflow reaches over a network or a database server: it never creates them as a side effect.
REMOTE_STORE_SCHEMES = ("http", "https", "databricks", "postgresql", "mysql", "mssql")


def existing_tracking_store(uri: str | None) -> str:
    """The resolved tracking URI of a store that already exists, for commands that only read it.

    MLflow creates a missing SQLite file or store directory on first use, so a
    mistyped path would silently give an empty store; refuse it instead, naming
    where the URI came from.
    """
    import sqlite3
    from urllib.parse import urlparse

    source = "--tracking-uri" if uri else "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else None
    resolved = resolve_tracking_uri(uri)
    given = f"{source} {uri or os.environ['MLFLOW_TRACKING_URI']}" if source else f"the default store {resolved}"
    hint = "give --tracking-uri (or MLFLOW_TRACKING_URI) of the store your study logged to"
    scheme = urlparse(resolved).scheme.split("+")[0]
    if scheme == "sqlite":
        if not resolved.startswith("sqlite:///"):
            raise ValueError(f"{given}: a SQLite store is sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH")
        path = Path(resolved[len("sqlite:///") :])
        if not path.is_file():
            raise ValueError(f"{given}: no MLflow store, {path} does not exist; {hint}")
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
                tables = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{given}: {path} is not an SQLite database ({error})") from None
        if "experiments" not in tables:
            raise ValueError(f"{given}: {path} is an SQLite database without MLflow's tables; {hint}")
    elif scheme in ("", "file"):
        path = Path(urlparse(resolved).path if scheme else resolved)
        if not path.is_dir():
            raise ValueError(f"{given}: no MLflow store, {path} is not a directory; {hint}")
    elif scheme not in REMOTE_STORE_SCHEMES:
        raise ValueError(
            f"{given}: unknown scheme {scheme!r}; MLflow stores are sqlite:///PATH, http(s)://HOST:PORT, "
            "a directory (file:///PATH), databricks, or postgresql/mysql/mssql://..."
        )
    return resolved


def check_tracking_server(uri: str | None) -> None:
    """Refuse an MLflow server that cannot be reached or refuses the login, in one line and seconds.

    Without this, MLflow's client retries for minutes and fails with a traceback only when
    the first trial starts. Credentials come from where MLflow reads them:
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials).
    """
    if not uri or not uri.startswith(("http://", "https://")):
        return
    import re

    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(
            creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0, timeout=10,
            params={"max_results": 1}, raise_on_status=False,
        )
    except MlflowException as error:
        cause = re.search(r"\[Errno -?\d+\] [^\"')]+", str(error))
        reason = cause.group(0) if cause else str(error).splitlines()[0][:200]
        message = f"cannot reach the MLflow server at {uri} ({reason}); start it or fix --tracking-uri"
        raise ValueError(message) from None
    if response.status_code == 401:
        problem = (
            f"refused the login of user {creds.username!r}" if creds.username
            else "needs a login, and MLFLOW_TRACKING_USERNAME is not set"
        )
        raise ValueError(
            f"the MLflow server at {uri} {problem} (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account on that server"
        )
    if response.status_code != 200:
        raise ValueError(f"the MLflow server at {uri} answered HTTP {response.status_code} to a search of experiments")


def check_tracking_store(uri: str | None) -> None:
    """Refuse, before Ray starts, a store a study could not log to: an unreachable server, a SQLite file in no folder."""
    resolved = resolve_tracking_uri(uri)
    check_tracking_server(resolved)
    if resolved.startswith("sqlite:///"):
        folder = Path(resolved[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise ValueError(f"--tracking-uri {resolved}: the folder {folder} does not exist; create it or use another path")
