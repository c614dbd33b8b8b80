"""structlog set-up shared by every process: console for people, JSON for log shippers.

One chain for our events and for stdlib records (uvicorn, pika, paramiko, httpx): both end
in the same processors, so both are masked and both render the same way. The order is
what matters for secrets: exceptions are formatted into text first, the masker runs on
that text, and only then the renderer (a traceback quoting a secret is masked too).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.types import Processor

__all__ = ["configure_logging", "wants_json"]


def wants_json(format: str, stream: TextIO | None = None) -> bool:
    """``[log] format``: ``json`` and ``console`` say so; ``auto`` is JSON lines unless
    ``stream`` (stderr) is a terminal (journald, a file, a pipe into a shipper)."""
    if format == "json":
        return True
    if format == "console":
        return False
    target = sys.stderr if stream is None else stream
    try:
        return not target.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: not a person
        return True


def configure_logging(
    json: bool | str = False,
    level: str = "info",
    *,
    masker: Processor | None = None,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging through one renderer.

    Parameters:
        json: True/False, or a ``[log] format`` value (``auto``, ``console``, ``json``).
        level: the lowest level shown.
        masker: a processor that masks secrets in an event's values (the worker's
            `buildworker.worker.redact.structlog_masker`); it runs after exceptions are
            formatted, on our events and on stdlib records alike.
        stream: where lines go (default stderr).

    Events carry ``job_id`` (and ``attempt``) wherever a job is in scope: bind them with
    ``structlog.get_logger().bind(job_id=...)`` or ``structlog.contextvars`` rather than
    formatting them into messages.
    """
    out = sys.stderr if stream is None else stream
    as_json = wants_json(json, out) if isinstance(json, str) else json
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=_isatty(out))
    )
    # Exceptions become an "exception" field of text before anything is masked or rendered.
    tail: list[Processor] = [structlog.processors.format_exc_info]
    if masker is not None:
        tail.append(masker)
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # pika, paramiko and httpx are chatty at INFO about every connection and request (the
    # worker makes several a second); their warnings still show.
    for noisy in ("pika", "paramiko", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
