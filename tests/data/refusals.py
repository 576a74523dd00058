"""One check for a stage that must refuse a batch with one message naming every problem."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from components.data.raw import RawFormatError


def refused_naming(run: Callable[[Any], Any], cfg: Any, headline: str, expected: list[str]) -> str:
    """Run `run(cfg)`; it must raise RawFormatError whose message starts with `headline` and holds
    every line of `expected`. Returns the message for further checks."""
    with pytest.raises(RawFormatError) as refused:
        run(cfg)
    message = str(refused.value)
    assert message.startswith(headline), message
    missing = [line for line in expected if line not in message]
    assert not missing, f"not named: {missing}\nin: {message}"
    return message
