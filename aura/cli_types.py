"""Argument types the `aura` commands share: a count out of range is refused by argparse in one line (exit 2),
never run as something else (`--cycles 0` ran one cycle; `status --cycles 0` said "none yet" over 84 cycles)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting whole numbers >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"  # what argparse names in "invalid <type> value" messages
    return parse
