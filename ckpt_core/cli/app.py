"""The ``ckpt`` commands. Each one opens the store, does its work, and prints a table or ``--json``.

Errors a user can fix (store down, wrong URL or option, bad key) print one line on stderr and exit
with status 2; ``verify`` exits 1 when it finds corrupted records. Set ``CKPT_DEBUG=1`` to get the
traceback of an unexpected error. Everything printed passes through :meth:`Session.scrub`, which
removes the URL's password and every secret-named storage option, whatever message carried them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import crypto, keys
from ..envelope import open_record, read_header
from ..errors import CheckpointCorrupted, CheckpointError, EncryptionKeyError, StoreConfigError
from ..redact import redact_text, redact_url
from ..stores.base import Store
from . import inventory, render
from .inventory import Entry

app = typer.Typer(
    name="ckpt",
    help="Inspect, clean up and verify ckpt checkpoint stores (local paths, s3://, redis://, ...).",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks with local variables would print storage options, secrets included.
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

T = TypeVar("T")

# -- shared options --------------------------------------------------------------------------
Url = Annotated[
    str,
    typer.Argument(
        help="Store URL: ./dir, file:///abs, s3://bucket/prefix, redis://host:6379/0, ...",
        envvar="CKPT_URL",
        show_default=False,
    ),
]
Options = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        help="Storage option NAME=VALUE (repeatable; dotted names nest, values parse as JSON "
        f"when they can). Also read from ${inventory.OPTIONS_ENV} as a JSON object.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Only this namespace.")]
Correlation = Annotated[
    str | None, typer.Option("--correlation", "-c", help="Only this correlation id.")
]
RunId = Annotated[str | None, typer.Option("--run", "-r", help="Only this run id.")]
Node = Annotated[str | None, typer.Option("--node", help="Only this node.")]
SigningKey = Annotated[
    str | None,
    typer.Option(
        "--signing-key",
        envvar="CKPT_SIGNING_KEY",
        help="HMAC key the records were signed with; unsigned or mis-signed records then fail.",
        show_default=False,
        show_envvar=True,
    ),
]
EncryptionKey = Annotated[
    str | None,
    typer.Option(
        "--encryption-key",
        envvar=crypto.ENV_VAR,
        help="Key(s) to decrypt encrypted records for the preview (comma-separated for several). "
        "Without it, encrypted records show their header only.",
        show_default=False,
        show_envvar=True,
    ),
]


#: ``scheme://user:password@`` inside free text (messages are not URLs: never feed them whole to
#: ``redact_url``, which would re-encode everything after a ``?``).


class Session:
    """One command invocation: the open store and the secrets that must never be printed."""

    def __init__(self, url: str, option_pairs: list[str] | None, as_json: bool) -> None:
        self.as_json = as_json
        self.url = url
        self.shown_url = redact_url(url)
        self.secrets: list[str] = []
        self.out = render.console()
        self.err = render.console(stderr=True)
        options = inventory.parse_options(option_pairs or [])
        self.secrets = inventory.secret_values(url, options)
        self.store: Store = inventory.open_cli_store(url, options)

    def scrub(self, text: str) -> str:
        return redact_text(text, self.secrets)

    def emit_json(self, data: Any) -> None:
        typer.echo(self.scrub(json.dumps(data, indent=2, ensure_ascii=False, default=str)))

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[Callable[[], None]]:
        """A progress bar on stderr (hidden for --json and when stderr is not a terminal)."""
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
            disable=self.as_json or not self.err.is_terminal,
        )
        with bar:
            task = bar.add_task(label, total=total)
            yield lambda: bar.advance(task)

    def close(self) -> None:
        self.store.close()


def _fail(message: str, code: int = 2) -> typer.Exit:
    render.console(stderr=True).print(f"[red]error:[/] {render._plain(message)}", soft_wrap=True)
    return typer.Exit(code)


def _run(
    url: str, option_pairs: list[str] | None, as_json: bool, body: Callable[[Session], T]
) -> T:
    """Open the session, run the command, and turn errors into one line + exit status 2."""
    session: Session | None = None
    scrub: Callable[[str], str] = redact_text
    try:
        session = Session(url, option_pairs, as_json)
        scrub = session.scrub
        return body(session)
    except typer.Exit:
        raise
    except CheckpointError as exc:
        raise _fail(scrub(str(exc))) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    except Exception as exc:
        if os.environ.get("CKPT_DEBUG"):
            raise
        raise _fail(
            scrub(f"unexpected {type(exc).__name__}: {exc} (set CKPT_DEBUG=1 for a traceback)")
        ) from None
    finally:
        if session is not None:
            # Closing must not hide the command's own result or error.
            with contextlib.suppress(Exception):
                session.close()


def _signing_key(value: str | None) -> bytes | None:
    return value.encode() if value else None


def _keyring(value: str | None) -> crypto.Keyring | None:
    return crypto.keyring(value, where="--encryption-key") if value else None


# -- ls --------------------------------------------------------------------------------------
@app.command("ls")
def ls_command(
    url: Url,
    namespace: Namespace = None,
    correlation: Correlation = None,
    run: RunId = None,
    tree: Annotated[bool, typer.Option("--tree", "-t", help="Show a tree, not a table.")] = False,
    headers: Annotated[
        bool,
        typer.Option(
            "--headers/--no-headers",
            help="Read each record's header for its codec (and Redis ages). --no-headers only "
            "lists keys: faster on big object stores.",
        ),
    ] = True,
    option: Options = None,
    as_json: AsJson = False,
) -> None:
    """List namespaces, correlations, runs and nodes with size, age, codec and scope."""

    def body(s: Session) -> None:
        entries = inventory.scan(s.store, namespace=namespace, correlation=correlation, run=run)
        if headers and entries:
            with s.progress("reading headers", len(entries)) as tick:
                entries = inventory.with_headers(s.store, entries, tick)
        if s.as_json:
            now = time.time()
            s.emit_json({"store": s.shown_url, "records": [e.to_json(now) for e in entries]})
            return
        if not entries:
            s.out.print(
                f"no records in {render._plain(s.scrub(s.shown_url))}"
                + _filters(namespace=namespace, correlation=correlation, run=run)
            )
            return
        title = s.scrub(
            f"{s.shown_url}: {_count(len(entries), 'record')}, "
            f"{render.human_size(sum(e.size for e in entries))}"
        )
        view = render.entries_tree if tree else render.entries_table
        s.out.print(view(entries, title, headers))

    _run(url, option, as_json, body)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _filters(**filters: str | None) -> str:
    given = [f"{name}={value!r}" for name, value in filters.items() if value is not None]
    return f" matching {', '.join(given)}" if given else ""


# -- show ------------------------------------------------------------------------------------
PREVIEW_CHARS = 600


def preview(header: dict[str, Any], parts: list[memoryview], allow_pickle: bool) -> str:
    """A short, safe text view of a verified payload. Pickle is never loaded unless allowed."""
    from ..serde import CodecSet

    codec = str(header.get("codec"))
    size = sum(p.nbytes for p in parts)
    if codec == "raw":
        data = b"".join(bytes(p[:PREVIEW_CHARS]) for p in parts)[:PREVIEW_CHARS]
        return repr(data) + (f" … ({size} bytes)" if size > PREVIEW_CHARS else "")
    if codec == "json":
        text = b"".join(bytes(p) for p in parts)[: PREVIEW_CHARS * 4].decode("utf-8", "replace")
        return _cut(text)
    if codec == "pickle" and not allow_pickle:
        return (
            f"({size} bytes of pickle, not decoded: loading a pickle runs code chosen by whoever "
            "wrote it. Pass --allow-pickle if you trust this store.)"
        )
    try:
        value = CodecSet(allow_pickle=allow_pickle).get(codec).decode(parts, header.get("schema"))
    except Exception as exc:
        return f"(cannot decode the {codec} payload here: {type(exc).__name__}: {exc})"
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + f" … ({len(text)} chars)"


def _resolve_key(
    key: str | None,
    namespace: str | None,
    correlation: str | None,
    run: str | None,
    node: str | None,
) -> str:
    if key is not None:
        if any(v is not None for v in (correlation, run, node)):
            raise StoreConfigError("give either KEY or --namespace/--correlation|--run/--node")
        return key
    if namespace is None or node is None or (correlation is None) == (run is None):
        raise StoreConfigError(
            "name one record: a KEY (as printed by `ckpt ls --json`), or --namespace, --node and "
            "exactly one of --correlation / --run"
        )
    if correlation is not None:
        return keys.record_key(namespace, "correlation", correlation, node)
    assert run is not None
    return keys.record_key(namespace, "run", run, node)


@app.command("show")
def show_command(
    url: Url,
    key: Annotated[
        str | None, typer.Argument(help="Store key (see `ckpt ls --json`).", show_default=False)
    ] = None,
    namespace: Namespace = None,
    correlation: Correlation = None,
    run: RunId = None,
    node: Node = None,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="Decode pickle payloads (runs code from the store)."),
    ] = False,
    signing_key: SigningKey = None,
    encryption_key: EncryptionKey = None,
    option: Options = None,
    as_json: AsJson = False,
) -> None:
    """Show one record's header and a short preview of its value (verified first)."""

    def body(s: Session) -> None:
        record_key = _resolve_key(key, namespace, correlation, run, node)
        data = s.store.get(record_key)
        if data is None:
            raise _fail(f"no record {record_key!r} in {s.shown_url}", 1)
        keyring = _keyring(encryption_key)
        try:
            opened = open_record(
                data, record_key, _signing_key(signing_key), keyring, decrypt=keyring is not None
            )
        except CheckpointCorrupted as exc:
            try:
                header: dict[str, Any] | None = read_header(data, record_key)
            except CheckpointCorrupted:
                header = None
            if s.as_json:
                s.emit_json({"key": record_key, "ok": False, "error": str(exc), "header": header})
            else:
                if header is not None:
                    s.out.print(render.header_table(record_key, header, {"size": str(len(data))}))
                label = "refused" if isinstance(exc, EncryptionKeyError) else "corrupted"
                s.err.print(f"[red]{label}:[/] {render._plain(s.scrub(str(exc)))}")
            raise typer.Exit(1) from None
        kid = (opened.header.get("enc") or {}).get("kid") if opened.encrypted else None
        if opened.encrypted and keyring is None:
            text = (
                f"(encrypted with key id {kid}; pass --encryption-key or set "
                f"{crypto.ENV_VAR} to see the value)"
            )
        else:
            text = preview(opened.header, opened.parts, allow_pickle)
        if s.as_json:
            s.emit_json(
                {
                    "key": record_key,
                    "ok": True,
                    "size": len(data),
                    "checksum": opened.checksum,
                    "signed": opened.signed,
                    "encrypted": opened.encrypted,
                    "header": opened.header,
                    "preview": text,
                }
            )
            return
        extra = {
            "record size": render.human_size(len(data)),
            "checksum": f"{opened.checksum} (verified)",
            "signed": "yes (signature verified)"
            if opened.signed and signing_key
            else ("yes (not checked: no --signing-key)" if opened.signed else "no"),
            "encrypted": "no"
            if not opened.encrypted
            else f"yes (key id {kid}, "
            + ("decrypted)" if keyring is not None else "not decrypted: no --encryption-key)"),
        }
        s.out.print(render.header_table(record_key, opened.header, extra))
        s.out.print()
        s.out.print("[bold]preview[/]")
        s.out.print(render._plain(s.scrub(text)), soft_wrap=True)

    _run(url, option, as_json, body)


# -- rm --------------------------------------------------------------------------------------
@app.command("rm")
def rm_command(
    url: Url,
    namespace: Namespace = None,
    correlation: Correlation = None,
    run: RunId = None,
    node: Node = None,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", "-k", help="Delete this exact store key (repeatable)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    option: Options = None,
    as_json: AsJson = False,
) -> None:
    """Delete a correlation's, a run's or a node's checkpoints (asks first unless --yes)."""
    if correlation is None and run is None and node is None and not key:
        raise _fail("say what to delete: --correlation, --run, --node and/or --key")
    if correlation is not None and run is not None:
        raise _fail("--correlation and --run select different records; give one of them")

    def body(s: Session) -> None:
        targets: list[Entry] = []
        if correlation is not None or run is not None or node is not None:
            targets = inventory.scan(
                s.store, namespace=namespace, correlation=correlation, run=run, node=node
            )
            targets = [t for t in targets if t.scope != inventory.OTHER]
        for k in key or []:
            info = s.store.head(k)
            if info is not None and all(t.key != k for t in targets):
                targets.append(inventory.entry_for(info))
        if not targets:
            if s.as_json:
                s.emit_json({"store": s.shown_url, "deleted": [], "count": 0})
            else:
                s.out.print(
                    "nothing to delete"
                    + _filters(namespace=namespace, correlation=correlation, run=run, node=node)
                )
            return
        if not yes:
            if s.as_json:
                raise _fail(
                    f"refusing to delete {_count(len(targets), 'record')} without confirmation: "
                    "pass --yes"
                )
            s.out.print(render.entries_table(targets, "about to delete", with_codec=False))
            size = render.human_size(sum(t.size for t in targets))
            try:
                confirmed = typer.confirm(
                    f"Delete these {_count(len(targets), 'record')} ({size})?"
                )
            except click.exceptions.Abort:  # end of input, Ctrl-C at the prompt
                confirmed = False
            if not confirmed:
                s.out.print("aborted; nothing was deleted")
                raise typer.Exit(1)
        with s.progress("deleting", len(targets)) as tick:
            for target in targets:
                s.store.delete(target.key)
                tick()
        if s.as_json:
            s.emit_json(
                {"store": s.shown_url, "deleted": [t.key for t in targets], "count": len(targets)}
            )
        else:
            size = render.human_size(sum(t.size for t in targets))
            s.out.print(f"deleted {_count(len(targets), 'record')} ({size})")

    _run(url, option, as_json, body)


# -- gc --------------------------------------------------------------------------------------
@app.command("gc")
def gc_command(
    url: Url,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Delete runs/correlations whose newest record is older than this (30m, 12h, 7d).",
        ),
    ] = None,
    keep_last: Annotated[
        int | None,
        typer.Option(
            "--keep-last",
            min=0,
            help="Always keep the N newest runs and N newest correlations of each namespace.",
        ),
    ] = None,
    namespace: Namespace = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be deleted.")
    ] = False,
    option: Options = None,
    as_json: AsJson = False,
) -> None:
    """Delete old checkpoints: whole runs and correlations, never keys ckpt did not lay out."""
    if older_than is None and keep_last is None:
        raise _fail("gc needs --older-than (e.g. 7d) and/or --keep-last N")
    try:
        age = inventory.parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise _fail(str(exc)) from None

    def body(s: Session) -> None:
        entries = inventory.scan(s.store, namespace=namespace)
        undated = [e for e in entries if e.modified is None and e.scope != inventory.OTHER]
        if undated:  # Redis: the age is in the header
            with s.progress("reading headers", len(undated)) as tick:
                dated = {e.key: e for e in inventory.with_headers(s.store, undated, tick)}
            entries = [dated.get(e.key, e) for e in entries]
        doomed = inventory.gc_candidates(entries, age, keep_last, time.time())
        if not dry_run and doomed:
            with s.progress("deleting", len(doomed)) as tick:
                for entry in doomed:
                    s.store.delete(entry.key)
                    tick()
        size = sum(e.size for e in doomed)
        if s.as_json:
            s.emit_json(
                {
                    "store": s.shown_url,
                    "dry_run": dry_run,
                    "count": len(doomed),
                    "bytes": size,
                    "deleted" if not dry_run else "would_delete": [e.key for e in doomed],
                }
            )
            return
        if not doomed:
            s.out.print("nothing to collect")
            return
        verb = "would delete" if dry_run else "deleted"
        s.out.print(render.entries_table(doomed, f"{verb}:", with_codec=False))
        s.out.print(f"{verb} {_count(len(doomed), 'record')} ({render.human_size(size)})")

    _run(url, option, as_json, body)


# -- verify ----------------------------------------------------------------------------------
@app.command("verify")
def verify_command(
    url: Url,
    namespace: Namespace = None,
    correlation: Correlation = None,
    run: RunId = None,
    signing_key: SigningKey = None,
    option: Options = None,
    as_json: AsJson = False,
) -> None:
    """Check every record's checksum (and signature with --signing-key); exit 1 on corruption."""

    def body(s: Session) -> None:
        entries = inventory.scan(s.store, namespace=namespace, correlation=correlation, run=run)
        with s.progress("verifying", len(entries)) as tick:
            verdicts = inventory.verify_all(s.store, entries, _signing_key(signing_key), tick)
        bad = [v for v in verdicts if not v.ok]
        skipped = [v for v in verdicts if v.skipped]
        if s.as_json:
            s.emit_json(
                {
                    "store": s.shown_url,
                    "checked": len(verdicts),
                    "ok": len(verdicts) - len(bad) - len(skipped),
                    "skipped": [v.key for v in skipped],
                    "signature_checked": bool(signing_key),
                    "bad": [{"key": v.key, "problem": v.problem} for v in bad],
                }
            )
        else:
            what = "checksums and signatures" if signing_key else "checksums"
            if bad:
                s.out.print(render.bad_table(bad))
            note = (
                f" ({_count(len(skipped), 'key')} not laid out by ckpt skipped)" if skipped else ""
            )
            s.out.print(
                f"checked {what} of {_count(len(verdicts) - len(skipped), 'record')}{note}: "
                + (f"[red]{len(bad)} corrupted[/]" if bad else "[green]all intact[/]")
            )
            if bad:
                s.out.print("delete a bad record with: ckpt rm URL --key KEY")
        if bad:
            raise typer.Exit(1)

    _run(url, option, as_json, body)


# -- stats -----------------------------------------------------------------------------------
@app.command("stats")
def stats_command(
    url: Url,
    namespace: Namespace = None,
    option: Options = None,
    as_json: AsJson = False,
) -> None:
    """Count records and bytes by namespace and scope."""

    def body(s: Session) -> None:
        entries = inventory.scan(s.store, namespace=namespace)
        rows = inventory.stats(entries)
        if s.as_json:
            s.emit_json(
                {
                    "store": s.shown_url,
                    "records": len(entries),
                    "bytes": sum(e.size for e in entries),
                    "by_namespace_scope": rows,
                }
            )
            return
        s.out.print(render.stats_table(rows, s.scrub(s.shown_url)))

    _run(url, option, as_json, body)
