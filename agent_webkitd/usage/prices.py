"""USD from tokens: `[usage.prices]`, USD per million tokens for each model-name prefix.

The longest prefix that matches a response's model prices it; a model no prefix matches
costs 0 and is logged once (add its prefix). Without `[usage.prices]` nothing has a
price and the API shows no `usd`. Costs are counted when the response is, so a price
changed later does not rewrite what was spent.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from ..config import PriceConfig
from .model import Usage

log = structlog.get_logger(__name__)


class Prices:
    def __init__(self, table: Mapping[str, PriceConfig]) -> None:
        # Longest prefix first, so "claude-sonnet-4-5" beats "claude-sonnet".
        self._table = sorted(table.items(), key=lambda item: -len(item[0]))
        self._unpriced: set[str] = set()

    @property
    def configured(self) -> bool:
        return bool(self._table)

    def cost(self, model: str | None, usage: Usage) -> float:
        """What `usage` of `model` costs in USD (0 without a price for it)."""
        if not self._table:
            return 0.0
        name = model or ""
        for prefix, price in self._table:
            if name.startswith(prefix):
                return (
                    usage.input_tokens * price.input
                    + usage.output_tokens * price.output
                    + usage.cache_creation_input_tokens * price.cache_write
                    + usage.cache_read_input_tokens * price.cache_read
                ) / 1_000_000
        if name not in self._unpriced:
            self._unpriced.add(name)
            log.warning("usage_model_unpriced", model=name)
        return 0.0
