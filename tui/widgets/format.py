"""Cell text shared by the views: units through humanize (bits/s for rates, bytes for totals)."""

from __future__ import annotations

import time

from rich.text import Text

from capture_backend.output.report import bits_text, size_text

DASH = "–"
BAR_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bits(bps: float | None) -> str:
    """A rate in bits per second ('35.9 kb/s'); a dash when unknown."""
    if bps is None:
        return DASH
    return bits_text(bps) + "/s"


def size(nbytes: float | None) -> str:
    """A total in bytes ('208.0 kB')."""
    if nbytes is None:
        return DASH
    return size_text(nbytes)


def count(n: float | None) -> str:
    """An integer count with thousands separators."""
    return DASH if n is None else f"{int(n):,}"


def short_count(n: float | None) -> str:
    """A count for a narrow column: '42', '9999', '12k', '3.4M'."""
    if n is None:
        return DASH
    if n < 10_000:
        return str(int(n))
    if n < 999_500:
        return f"{n / 1000:.0f}k"
    return f"{n / 1e6:.1f}M" if n < 99_950_000 else f"{n / 1e6:.0f}M"


def ms(value: float | None) -> str:
    """Milliseconds to about three significant digits: '0.05', '8.00', '12.5', '1,230'."""
    if value is None:
        return DASH
    if value < 10:
        return f"{value:.2f}"
    if value < 999.95:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def per_second(n: float | None) -> str:
    """An event rate ('12.5/s')."""
    return DASH if n is None else f"{n:,.1f}/s"


def percent(p: float | None) -> str:
    """A percentage with one decimal."""
    return DASH if p is None else f"{p:.1f}%"


def duration(seconds: float | None) -> str:
    """A short duration: '45s', '3m05s', '2h07m'."""
    if seconds is None:
        return DASH
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def bar(value: float, top: float, width: int) -> str:
    """A bar of `width` cells, filled in proportion to value/top (eighths of a cell)."""
    if top <= 0 or value <= 0 or width <= 0:
        return ""
    eighths = round(min(1.0, value / top) * width * 8)
    return "█" * (eighths // 8) + (BAR_EIGHTHS[eighths % 8] if eighths % 8 else "")


def right(text: str) -> Text:
    """A right-aligned cell."""
    return Text(text, justify="right")


def endpoint(host: str, port: int) -> str:
    """host:port, with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def utc_stamp(seconds: float, fmt: str = "%Y-%m-%d %H:%M:%S", millis: bool = False) -> str:
    """A UTC time as text, optionally with milliseconds (cut, not rounded: rounded to the microsecond
    first, so a float's .191999 of what was .192 still shows .192)."""
    whole, micros = divmod(round(seconds * 1_000_000), 1_000_000)
    text = time.strftime(fmt, time.gmtime(whole))
    return f"{text}.{micros // 1000:03d}" if millis else text


def clock_time(seconds: float, today: float | None = None) -> str:
    """Local time of day ('17:02:10'), with the date when it is not the day of `today` (default: now)."""
    now = time.localtime(time.time() if today is None else today)
    then = time.localtime(seconds)
    same_day = (then.tm_year, then.tm_yday) == (now.tm_year, now.tm_yday)
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", then)
