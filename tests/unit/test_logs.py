"""--log_format json: one Cloud Logging-shaped object per line, context fields, no text copy."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from pipelines import logs
from pipelines.options import OptionsError, parse_command_line


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_severity_message_and_context(restore_root) -> None:
    buf = io.StringIO()
    logs.configure("json", stream=buf)
    log = logging.getLogger("predaudit.test")
    log.warning("sink %s refused %d rows", "clickhouse", 3, extra={"model": "fraud", "event_id": "e-1"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = [orjson.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 2, "every record is exactly one line"
    first, second = lines
    assert first["severity"] == "WARNING" and first["message"] == "sink clickhouse refused 3 rows"
    assert first["model"] == "fraud" and first["event_id"] == "e-1" and first["logger"] == "predaudit.test"
    assert first["time"].endswith("Z")
    assert second["severity"] == "ERROR" and "RuntimeError: boom" in second["message"]


def test_configure_twice_keeps_one_handler_and_text_is_default(restore_root) -> None:
    a, b = io.StringIO(), io.StringIO()
    logs.configure("json", stream=a)
    logs.configure("text", stream=b)
    logging.getLogger("predaudit.test").info("hello")
    assert a.getvalue() == "", "the first handler was replaced, not kept"
    assert "INFO predaudit.test hello" in b.getvalue()


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="--log_format 'xml'"):
        logs.configure("xml")


@pytest.mark.parametrize("mode", ["streaming", "replay"])
def test_log_format_is_an_option_of_both_commands(mode: str) -> None:
    _, flags = parse_command_line(["--log_format", "json", "--sinks", "clickhouse"], mode, "predaudit")
    assert "--log_format=json" in flags or ("--log_format" in flags and "json" in flags)
    with pytest.raises(OptionsError):
        parse_command_line(["--log_format", "xml", "--sinks", "clickhouse"], mode, "predaudit")
