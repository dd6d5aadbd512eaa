"""One place that removes credentials from URLs and option dicts.

Everything that shows a store to a person (``repr``, log lines, error messages, the CLI) goes
through :func:`redact_url` / :func:`redact_options`, so a secret cannot leak through one forgotten
f-string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_WORDS = re.compile(
    r"(pass|secret|token|key|credential|auth|signature|session|private)", re.IGNORECASE
)
_MASK = "***"


def is_secret_name(name: str) -> bool:
    """True for option names that hold credentials (``password``, ``aws_secret_access_key``...)."""
    return bool(_SECRET_WORDS.search(name))


def redact_url(url: str) -> str:
    """Return ``url`` with any password and secret-looking query values masked.

    ``redis://user:hunter2@host:6379/0`` becomes ``redis://user:***@host:6379/0``.
    Plain paths are returned unchanged.
    """
    if "://" not in url:
        return url
    url = _mask_raw_password(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{hostport}" if sep else f"{_MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = [
            (k, _MASK if is_secret_name(k) else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    return keep_slashes(url, urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def _mask_raw_password(url: str) -> str:
    """Mask ``user:password@`` even when the password holds an unescaped ``/``, ``?`` or ``#``.

    ``urlsplit`` ends the host at the first of those, so ``redis://u:pa/ss@host`` would give a
    netloc without ``@`` and the password would be shown whole. Here the userinfo runs to the
    *last* ``@``, if it starts with ``user:``. ``host:8080/path?mail=a@b`` (digits after the colon,
    then a path) is a port and is left to ``urlsplit``. Masking too much only costs readability.
    """
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")
    user, colon, password = rest[:at].partition(":")
    if at == -1 or not colon or any(c in user for c in "/?#"):
        return url
    head = re.split(r"[/?#]", password, maxsplit=1)
    if len(head) == 2 and head[0].isdigit():
        return url
    return f"{scheme}://{user}:{_MASK}@{rest[at + 1 :]}"


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Mask secret-looking values in (possibly nested) storage options."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, Mapping):
            out[name] = redact_options(value)
        elif is_secret_name(str(name)) and value is not None:
            out[name] = _MASK
        else:
            out[name] = value
    return out


def keep_slashes(original: str, rebuilt: str) -> str:
    """urlunsplit turns ``unix:///run/redis.sock`` into ``unix:/run/redis.sock`` (``unix`` is not
    a netloc scheme for urllib), which redis-py then rejects; put the ``//`` back."""
    scheme, sep, _ = original.partition("://")
    if sep and not rebuilt.startswith(scheme + "://") and rebuilt.startswith(scheme + ":"):
        return f"{scheme}://{rebuilt[len(scheme) + 1 :]}"
    return rebuilt


_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://[^\s/@:]*:)[^\s@]+@")


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask URL passwords (``scheme://user:pass@``) and the given secret values in free text.

    For error messages and log lines, where :func:`redact_url` would re-encode the whole text.
    """
    text = _USERINFO.sub(r"\1***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
