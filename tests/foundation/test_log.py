"""The process-wide log set-up: JSON lines off a terminal, the console on one, `[log] format`
overriding; secrets masked in tracebacks and in stdlib records (paramiko, pika) too."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
from collections.abc import Iterator

import pytest
import structlog

from buildworker.log import configure_logging, wants_json
from buildworker.worker.redact import NeedleSet, structlog_masker

SECRET = "hunter2-Very-Secret-Value"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test configures the process's logging; put a plain set-up back afterwards."""
    yield
    configure_logging(False, "info")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_auto_is_json_off_a_terminal_and_console_on_one() -> None:
    assert wants_json("auto", io.StringIO()) is True
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert wants_json("auto", tty) is False
            # and an explicit format wins either way
            assert wants_json("json", tty) is True
        assert wants_json("console", io.StringIO()) is False
    finally:
        os.close(leader)
        os.close(follower)


def test_json_lines_carry_bound_and_context_fields() -> None:
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    structlog.contextvars.bind_contextvars(job_id=7, attempt=2, image="debian/bookworm")
    try:
        structlog.get_logger().info("step_start", step="packages")
    finally:
        structlog.contextvars.clear_contextvars()
    (event,) = lines(out)
    assert event["event"] == "step_start" and event["level"] == "info"
    assert (event["job_id"], event["attempt"], event["image"]) == (7, 2, "debian/bookworm")
    assert "timestamp" in event


def test_a_traceback_quoting_a_secret_is_masked_and_kept_as_a_field() -> None:
    out = io.StringIO()
    needles = NeedleSet()
    needles.add(SECRET, "token")
    configure_logging("json", "info", masker=structlog_masker(needles), stream=out)
    try:
        raise RuntimeError(f"the command printed {SECRET}")
    except RuntimeError:
        structlog.get_logger().exception("build_crashed", job_id=3)
    text = out.getvalue()
    assert SECRET not in text
    (event,) = lines(out)
    assert "Traceback (most recent call last)" in str(event["exception"])
    assert "the command printed [MASKED]" in str(event["exception"])


def test_stdlib_records_are_rendered_as_json_and_masked_too() -> None:
    out = io.StringIO()
    needles = NeedleSet()
    needles.add(SECRET, "token")
    configure_logging("json", "info", masker=structlog_masker(needles), stream=out)
    paramiko = logging.getLogger("paramiko.transport")
    paramiko.warning("auth failed for %s", SECRET)
    try:
        raise ValueError(SECRET)
    except ValueError:
        logging.getLogger("uvicorn.error").exception("request failed")
    text = out.getvalue()
    assert SECRET not in text
    first, second = lines(out)
    assert first["event"] == "auth failed for [MASKED]" and first["level"] == "warning"
    assert "ValueError: [MASKED]" in str(second["exception"])


def test_without_a_masker_nothing_is_masked() -> None:
    """(so the tests above prove the masker, not some accident of rendering)"""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    structlog.get_logger().info("x", error=SECRET)
    assert SECRET in out.getvalue()


def test_an_unknown_log_format_is_a_config_error_naming_the_key() -> None:
    from buildworker.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"log\.format: expected one of auto, console, json"):
        parse_config("[log]\nformat = xml\n")
