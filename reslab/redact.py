"""Credentials never leave the machine: every URI reslab prints or stores shows its password as `***`.

A sweep on shared infrastructure names its queue and its tracking store by URI (`postgresql://user:pw@host/db`), and
both end up in places other people read: the console and its CI logs, worker logs, MLflow tags, params and
artifacts, the resolved config, the report. Two layers keep the password out of all of them:
- `redact_uri` / `redact` rewrite the userinfo of every URI in a text (`scheme://user:***@host`);
- `remember` records the passwords of the URIs this process was given (and of `PGPASSWORD` and
  `MLFLOW_TRACKING_PASSWORD`), in every spelling (as typed, percent-decoded, percent-encoded), and `redact` masks
  them wherever they appear, e.g. in a driver's error message that quotes the password alone.
Processes that receive real URIs get them through their environment (`STORAGE_ENV`, `TRACKING_ENV`), never through
a file or their command line, so they are not in `ps` output either. Standard library only: the CLI's argument and
config checks use it before torch or MLflow are imported.
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import TextIO
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"
#: The environment variables the CLI reads when no flag or config names a store.
STORAGE_ENV = "RESLAB_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: MLflow's own variables for HTTP basic authentication against `mlflow server`.
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
_PASSWORD_VARS = ("PGPASSWORD", PASSWORD_ENV)
#: Shorter secrets are still masked inside URIs, but not as bare words (a 2-letter password would mask every
#: occurrence of those letters in every log line).
_MIN_BARE = 4

# scheme://user:password@ -- the password stops at the last '@' before whitespace or a quote, so a password with
# a raw ':' or '/' is still masked whole (an '@' inside a path may make this mask more than a password: harmless).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<password>[^\s'\"]*)@")
_known: set[str] = set()


def password_of(uri: str | None) -> str | None:
    """The password in `uri`'s userinfo as written (percent-encoded if it was), or None."""
    if not uri:
        return None
    found = _USERINFO.search(uri)
    return found.group("password") or None if found else None


def redact_uri(uri: str | None) -> str | None:
    """`uri` with its password shown as `***` (anything else untouched)."""
    if uri is None:
        return None
    return _USERINFO.sub(lambda m: f"{m.group('head')}{MASK}@", uri)


def remember(*values: str | None) -> None:
    """Record the password of each URI given (and of the password variables of this environment), so `redact`
    masks it anywhere, not only inside a URI."""
    secrets = [password_of(v) for v in values]
    secrets += [os.environ.get(var) for var in _PASSWORD_VARS]
    for secret in filter(None, secrets):
        for form in (secret, unquote(secret), quote(unquote(secret), safe=""), quote(unquote(secret))):
            if len(form) >= _MIN_BARE:
                _known.add(form)


def redact(text: str) -> str:
    """`text` with every URI's password and every remembered secret masked."""
    if not text:
        return text
    text = redact_uri(text) or text
    for secret in sorted(_known, key=len, reverse=True):  # longest first: a secret may contain another's spelling
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """An http(s) URI -> (the URI without userinfo, user, password), percent-decoded: MLflow's REST client sends
    credentials from `MLFLOW_TRACKING_USERNAME`/`PASSWORD`, and a URI with userinfo would fail name resolution."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rsplit("@", 1)[1]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return bare, user, password


class RedactingStream(io.TextIOBase):
    """A text stream that masks secrets in everything written to it: tracebacks, warnings and third-party log lines
    reach the console and the worker logs through here."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "encoding", "utf-8")

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def guard_streams(*uris: str | None) -> None:
    """Remember the secrets of `uris` and route this process's stdout and stderr through `RedactingStream`."""
    remember(*uris)
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
