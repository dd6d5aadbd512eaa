"""Turn arbitrary ids into store keys that cannot escape, collide or glob.

A store key is ``/``-joined *components*. Every user-supplied string (namespace, run id,
correlation id, node name) becomes exactly one component through :func:`encode_component`:

- ``A-Z a-z 0-9 _ -`` and ``.`` (except a leading one) are kept, so keys stay readable;
- every other character is percent-encoded from its UTF-8 bytes (``/`` → ``%2F``, ``*`` → ``%2A``,
  ``:`` → ``%3A``, ``%`` → ``%25``), so no component is ``.``/``..``, none contains a separator or a
  glob character (Redis ``SCAN``, fsspec ``glob``) and none starts with ``.`` (our temp files do);
- the empty string is ``~`` and a component longer than :data:`MAX_COMPONENT` characters is
  shortened to a readable prefix plus ``~`` plus a 256-bit digest of the full id. ``~`` never occurs
  in a plain encoding, so shortened and plain components cannot collide.

The plain encoding is reversible (:func:`decode_component`); a shortened one decodes to its prefix
plus ``…`` and the real id is kept in the record header.
"""

from __future__ import annotations

import functools
import hashlib
import re

from .errors import InvalidKey

#: Longest encoded component; well under the 255-byte file-name limit of common filesystems
#: (a temp-file suffix is added to it during writes).
MAX_COMPONENT = 180
_KEEP = re.compile(r"[A-Za-z0-9_.\-]")
#: Ids that encode to themselves (most node names and run ids): no escaping needed.
_PLAIN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
_HEX = "0123456789ABCDEF"
_HEX_DIGITS = frozenset("0123456789ABCDEFabcdef")
SEP = "/"


def encode_component(value: str) -> str:
    """Encode one id as a single safe key component (see the module docstring)."""
    if type(value) is not str:
        if not isinstance(value, str):
            raise InvalidKey(
                f"ids must be str, got {type(value).__name__} {value!r}; convert it with str() "
                "first"
            )
        value = str.__str__(value)  # a str subclass: encode its plain text
    if len(value) <= MAX_COMPONENT and _PLAIN.fullmatch(value):
        return value
    if len(value) <= _CACHED_LENGTH:
        return _encode_escaped_cached(value)
    return _encode_escaped(value)


#: Escaped encodings of ids up to this length are cached (every save and load encodes the same
#: few namespace, run and correlation ids again); longer ids are rare and would bloat the cache.
_CACHED_LENGTH = 512


def _encode_escaped(value: str) -> str:
    if "\x00" in value:
        raise InvalidKey(f"ids may not contain NUL characters: {value!r}")
    if value == "":
        return "~"
    out: list[str] = []
    for i, ch in enumerate(value):
        if _KEEP.match(ch) and not (ch == "." and i == 0):
            out.append(ch)
        else:
            for byte in ch.encode("utf-8", "surrogatepass"):
                out.append("%" + _HEX[byte >> 4] + _HEX[byte & 15])
    encoded = "".join(out)
    if len(encoded) <= MAX_COMPONENT:
        return encoded
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    head = encoded[: MAX_COMPONENT - len(digest) - 1]
    # Never cut an escape in half: drop a trailing partial "%X" / "%".
    cut = head.rfind("%")
    if cut != -1 and cut > len(head) - 3:
        head = head[:cut]
    return f"{head}~{digest}"


_encode_escaped_cached = functools.lru_cache(maxsize=4096)(_encode_escaped)


def decode_component(component: str) -> str:
    """Inverse of :func:`encode_component` for plain components; shortened ones end in ``…``.

    Never raises: a component not written by :func:`encode_component` (a foreign file in the
    store, a malformed ``%`` escape) decodes to a readable approximation, since this is only used
    to show keys to people, never to build them.
    """
    if component == "~":
        return ""
    shortened = "~" in component
    if shortened:
        component = component.split("~", 1)[0]
    raw = bytearray()
    i = 0
    while i < len(component):
        ch = component[i]
        escape = component[i + 1 : i + 3]
        if ch == "%" and len(escape) == 2 and all(c in _HEX_DIGITS for c in escape):
            raw.append(int(escape, 16))
            i += 3
        else:
            raw += ch.encode("utf-8", "surrogatepass")
            i += 1
    try:
        # surrogatepass: encode_component wrote lone surrogates that way, so they round-trip.
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
    return text + "…" if shortened else text


def join(*components: str) -> str:
    """Join already-encoded components into a key."""
    return SEP.join(components)


def escape_glob(pattern: str) -> str:
    """Escape Redis/fsspec glob characters; encoded components never contain them, but keys
    built by other code might, and a prefix must never match more than itself."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", pattern)


# -- record layout ---------------------------------------------------------------------------
#: Directory names of the two scopes under a namespace.
SCOPE_DIRS = {"run": "run", "correlation": "corr"}
_DIR_SCOPES = {v: k for k, v in SCOPE_DIRS.items()}


def scope_prefix(namespace: str, scope: str, owner: str) -> str:
    """``<ns>/run/<run_id>/`` or ``<ns>/corr/<correlation_id>/``, every id encoded."""
    return join(encode_component(namespace), SCOPE_DIRS[scope], encode_component(owner)) + SEP


def record_key(namespace: str, scope: str, owner: str, node: str) -> str:
    """The store key of one checkpoint.

    Cached: every save builds one key and every load two, always from the same few ids, and
    building one encodes (or at least matches) four ids. Only plain ``str`` ids are cached; a
    ``str`` subclass or a non-``str`` (which raises) goes the long way.
    """
    ids = (namespace, scope, owner, node)
    if type(namespace) is str and type(scope) is str and type(owner) is str and type(node) is str:
        key = _record_keys.get(ids)
        if key is None:
            key = _build_record_key(*ids)
            if len(_record_keys) >= _RECORD_KEYS_CACHED:
                _record_keys.clear()  # a long-lived process with many ids: start over
            _record_keys[ids] = key
        return key
    return _build_record_key(*ids)


def _build_record_key(namespace: str, scope: str, owner: str, node: str) -> str:
    return scope_prefix(namespace, scope, owner) + encode_component(node)


#: How many record keys :func:`record_key` keeps.
_RECORD_KEYS_CACHED = 4096
_record_keys: dict[tuple[str, str, str, str], str] = {}


def parse_record_key(key: str) -> tuple[str, str, str, str] | None:
    """``(namespace, scope, owner, node)`` decoded from a record key, or ``None`` if the key is
    not laid out by ckpt (shortened ids decode to their readable prefix plus ``…``)."""
    parts = key.split(SEP)
    if len(parts) != 4 or parts[1] not in _DIR_SCOPES:
        return None
    ns, scope_dir, owner, node = parts
    return (
        decode_component(ns),
        _DIR_SCOPES[scope_dir],
        decode_component(owner),
        decode_component(node),
    )
