"""Byte counts for people: :func:`human_size` writes them (decimal units, as the Hub shows them) and
:func:`parse_size` reads them (``500MB``, ``2GiB``, ``1234``); :func:`size_text` writes a number exactly."""
from __future__ import annotations

_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def human_size(n: float) -> str:
    """Decimal units as the Hub shows them: ``1.09 MB``."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if n < 999.5 or unit == "PB":
            break
    return f"{n:.2f} {unit}" if n < 9.995 else f"{n:.1f} {unit}" if n < 99.95 else f"{n:.0f} {unit}"


def size_text(n: int) -> str:
    """The shortest exact spelling of ``n`` bytes that :func:`parse_size` reads back: ``2GiB``, ``256MiB``, ``1GB``,
    ``1234`` (a default shown by ``--help``, written from the number that is the default)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10),
                        ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def parse_size(text: str | int, binary: bool = False) -> int:
    """``"500MB"`` -> 500_000_000, ``"2GiB"`` -> 2 * 2**30, ``"1234"`` -> 1234 (``k m g t``, case-insensitive,
    the ``B`` optional). ``binary=True`` reads the plain units as powers of 1024 too (``"2GB"`` -> 2 * 2**30).
    Raises ``ValueError`` for anything else."""
    t = str(text).strip().lower().removesuffix("b")
    iec = t.endswith("i") and t[-2:-1] in _DECIMAL
    if iec:
        t = t[:-1]
    unit = t[-1:] if t[-1:] in _DECIMAL else ""
    number = t[:-1] if unit else t
    try:
        if not unit:
            return int(number)
        scale = 1024 ** ("kmgt".index(unit) + 1) if iec or binary else _DECIMAL[unit]
        return int(float(number) * scale)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 500MB, 2GiB, 1234)") from None


__all__ = ["human_size", "parse_size", "size_text"]
