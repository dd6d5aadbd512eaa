"""Human output of the CLI: rich tables and trees, sizes and ages people can read at a glance."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from .inventory import OTHER, Entry, Verdict

_SCOPE_LABEL = {"run": "run", "correlation": "corr", OTHER: "other"}


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for limit, unit in ((60, "s"), (3600, "m"), (86400, "h"), (86400 * 7 * 100, "d")):
        divisor = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        if seconds < limit or unit == "d":
            return f"{int(seconds // divisor)}{unit}"
    raise AssertionError("unreachable")


def entries_table(entries: list[Entry], title: str, with_codec: bool) -> Table:
    now = time.time()
    table = Table(title=title, title_justify="left", header_style="bold", expand=False)
    table.add_column("namespace", overflow="fold")
    table.add_column("scope")
    table.add_column("run / correlation", overflow="fold")
    table.add_column("node", overflow="fold", ratio=1)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    if with_codec:
        table.add_column("codec", no_wrap=True)
    for e in entries:
        row = [
            e.namespace,
            _SCOPE_LABEL[e.scope],
            e.owner,
            e.node,
            human_size(e.size),
            human_age(e.age(now)),
        ]
        if with_codec:
            row.append(e.codec or ("[red]bad[/]" if e.header_error and e.scope != OTHER else "-"))
        table.add_row(*(_plain(c) if i < 4 else c for i, c in enumerate(row)))
    return table


def _plain(text: str) -> str:
    """Ids are user data: never let them be read as rich markup."""
    return text.replace("[", r"\[")


def entries_tree(entries: list[Entry], title: str, with_codec: bool) -> Tree:
    now = time.time()
    root = Tree(_plain(title), guide_style="dim")
    namespaces: dict[str, Tree] = {}
    owners: dict[tuple[str, str, str], Tree] = {}
    for e in entries:
        ns_node = namespaces.get(e.namespace)
        if ns_node is None:
            ns_node = namespaces[e.namespace] = root.add(f"[bold]{_plain(e.namespace or '-')}[/]")
        group = (e.namespace, e.scope, e.owner)
        parent = owners.get(group)
        if parent is None:
            label = (
                "other keys"
                if e.scope == OTHER
                else f"{'correlation' if e.scope == 'correlation' else 'run'} "
                f"[cyan]{_plain(e.owner)}[/]"
            )
            parent = owners[group] = ns_node.add(label)
        details = [human_size(e.size), human_age(e.age(now))]
        if with_codec and e.codec:
            details.append(e.codec)
        parent.add(f"{_plain(e.node)}  [dim]{'  '.join(details)}[/]")
    return root


def stats_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("namespace", overflow="fold")
    table.add_column("scope")
    table.add_column("runs / corrs", justify="right")
    table.add_column("records", justify="right")
    table.add_column("bytes", justify="right")
    total_records = total_bytes = 0
    for row in rows:
        total_records += row["records"]
        total_bytes += row["bytes"]
        table.add_row(
            _plain(row["namespace"] or "-"),
            _SCOPE_LABEL[row["scope"]],
            "-" if row["scope"] == OTHER else str(row["owners"]),
            str(row["records"]),
            human_size(row["bytes"]),
        )
    table.add_section()
    table.add_row("[bold]total[/]", "", "", str(total_records), human_size(total_bytes))
    return table


def header_table(key: str, header: dict[str, Any], extra: dict[str, str]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False, title=_plain(key))
    table.title_justify = "left"
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    shown = {_HEADER_LABEL.get(k, k): _format(k, v) for k, v in header.items()}
    for name, value in {**extra, **shown}.items():
        table.add_row(name, _plain(value))
    return table


_HEADER_LABEL = {"size": "payload size", "ns": "namespace", "corr": "correlation"}


def _format(name: str, value: Any) -> str:
    if name == "created_at" and isinstance(value, (int, float)):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
        return f"{stamp} ({human_age(time.time() - value)} ago)"
    if name == "size" and isinstance(value, int):
        return human_size(value)
    return str(value)


def bad_table(verdicts: list[Verdict]) -> Table:
    table = Table(header_style="bold red", title="corrupted records", title_justify="left")
    table.add_column("key", overflow="fold", ratio=1)
    table.add_column("problem", overflow="fold", ratio=2)
    for v in verdicts:
        table.add_row(_plain(v.key), _plain(v.problem or ""))
    return table


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)
