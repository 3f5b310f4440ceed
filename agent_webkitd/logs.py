"""Structured logging (structlog): one JSON object per line on stdout, or console lines for dev."""

from __future__ import annotations

import logging
import sys

import structlog

from .config import LoggingConfig


def configure_logging(config: LoggingConfig) -> None:
    level = getattr(logging, config.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # The SDK and aiohttp log through the standard library; keep them quiet unless debugging.
    logging.basicConfig(
        stream=sys.stdout,
        level=max(level, logging.WARNING),
        format="%(levelname)s %(name)s %(message)s",
    )
