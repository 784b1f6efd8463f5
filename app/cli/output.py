"""What every command prints: one-line failures on stderr, JSON, times, ages, short errors.

Text from outside (Userpilot's errors, ids, anything a relay answers) is shown as text: its
control characters (C0, DEL, C1, so ESC, CSI and OSC sequences too, and the bidirectional
overrides) are printed as their escapes (`\\x1b`), never acted on by the terminal (`plain`),
and in rich output its brackets are escaped so it is never read as markup (`markup`).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

_BEYOND_C0 = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
_UNSAFE_IN_JSON = re.compile(f"[{_BEYOND_C0}]")  # json.dumps escapes C0 controls itself


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object) -> str:
    """`value` as text a terminal only shows: every control character as its escape."""
    return _UNSAFE.sub(_escaped, str(value))


def markup(value: object) -> str:
    """`value` for rich output: `plain`, and never read as markup (`[red]` shows as is)."""
    return escape(plain(value))


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print `message` as one line on stderr (its control characters escaped: it may quote a
    relay's answer) and exit with `code`."""
    print(plain(message), file=sys.stderr)
    raise typer.Exit(code)


def console() -> Console:
    """Rich output on stdout; never wrapped narrower than a table needs when piped."""
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def print_json(value: Any) -> None:
    """`value` as JSON; JSON escapes C0 controls itself, the others are escaped here (`\\u009b`),
    still valid JSON: they can only stand inside strings."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    sys.stdout.write(_UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")


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
