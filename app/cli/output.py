"""What every command prints: one-line failures on stderr, JSON, times, ages, short errors."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from rich.console import Console


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print `message` as one line on stderr and exit with `code`."""
    print(message, file=sys.stderr)
    raise typer.Exit(code)


def console() -> Console:
    """Rich output on stdout; never wrapped narrower than a table needs when piped."""
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def when(unix: float | None) -> str:
    """A unix time as `2025-01-31 12:00:05Z`, or `-`."""
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float | None) -> str:
    """`42s`, `3m 12s`, `5h 01m`, `2d 03h`; `-` for none."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def short(text: str | None, width: int = 60) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis; `-` for none."""
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
