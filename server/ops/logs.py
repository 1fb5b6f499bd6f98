"""Logging for `python -m server` (issue 7): asynchronous, JSON or text, with request ids.

Every logger writes into a `RequestIdQueueHandler`: it stamps the record with the current
request id (actors/context.py), renders the message and any traceback in the caller, and
puts the record on an in-memory queue. One listener thread formats and writes, so a
request never waits for log I/O (a slow terminal or a full pipe blocks only that thread).
The thread wakes at most every `BATCH_S` and writes everything queued in one call: waking
per record (the stock `QueueListener`) made it fight the event loop for the GIL on every
access-log line, which halved the no-op request rate (`loadtest/RESULTS.md`).

`BMM_LOG_FORMAT`: `json` (one JSON object per line: `time`, `level`, `logger`, `message`,
`request_id` when there is one, plus any `extra=` fields) or `text`; default `text` when
stderr is a terminal, else `json`. `BMM_LOG_LEVEL`: default `INFO`.
"""
from __future__ import annotations

import atexit
import copy
import logging
import os
import queue
import sys
import time
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import IO

from pythonjsonlogger.msgspec import MsgspecFormatter

from actors.context import request_id

BATCH_S = 0.05  # the writer thread's longest nap: log lines appear at most this late

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
_exception_formatter = logging.Formatter()


class RequestIdQueueHandler(QueueHandler):
    """QueueHandler that keeps the record's fields (the JSON formatter needs them) and adds
    `request_id`, read here, in the caller's context: the listener thread has none."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.message = record.getMessage()
        record.msg, record.args = record.message, None
        if record.exc_info:  # tracebacks are not picklable, and are best rendered now
            record.exc_text = _exception_formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = _exception_formatter.formatStack(record.stack_info)
        if not getattr(record, "request_id", None):
            rid = request_id.get()
            if rid:
                record.request_id = rid
        return record


class _JsonFormatter(MsgspecFormatter):  # msgspec encodes in C: half the stdlib json's cost
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def json_formatter() -> logging.Formatter:
    """`time` is ISO 8601 UTC with milliseconds."""
    return _JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )


def text_formatter() -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT, defaults={"request_id": "-"})


def default_format(stream: IO[str] | None = None) -> str:
    stream = stream or sys.stderr
    return "text" if getattr(stream, "isatty", lambda: False)() else "json"


class BatchingListener(QueueListener):
    """A QueueListener that writes in batches: after a record arrives it naps `BATCH_S`,
    then formats whatever is queued and writes it with one `write` + `flush`."""

    def __init__(self, q: queue.SimpleQueue[logging.LogRecord], out: logging.StreamHandler,
                 batch_s: float = BATCH_S) -> None:
        super().__init__(q, out, respect_handler_level=True)
        self.out = out
        self.batch_s = batch_s

    def _monitor(self) -> None:
        q = self.queue
        done = False
        while not done:
            batch = [q.get()]
            time.sleep(self.batch_s)  # let the rest of this burst queue up
            while True:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            lines = []
            for record in batch:
                if record is self._sentinel:
                    done = True
                elif record.levelno >= self.out.level and self.out.filter(record):
                    try:
                        lines.append(self.out.format(record) + self.out.terminator)
                    except Exception:
                        self.out.handleError(record)
            if lines:
                try:
                    self.out.stream.write("".join(lines))
                    self.out.flush()
                except Exception:
                    self.out.handleError(next(r for r in batch if r is not self._sentinel))


class Logging:
    """What `configure` installed; `stop()` writes out what is queued and puts the root
    logger back as it was."""

    def __init__(self, handler: RequestIdQueueHandler, listener: BatchingListener,
                 replaced: list[logging.Handler], level: int) -> None:
        self.handler = handler
        self.listener = listener
        self._replaced = replaced
        self._level = level
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        root = logging.getLogger()
        root.removeHandler(self.handler)
        self.listener.stop()  # joins the thread once it wrote out whatever is queued
        for old in self._replaced:
            root.addHandler(old)
        root.setLevel(self._level)


def configure(fmt: str | None = None, level: str | None = None,
              stream: IO[str] | None = None) -> Logging:
    """Route the root logger through a queue to `stream` (stderr) in `fmt` at `level`
    (defaults: BMM_LOG_FORMAT, BMM_LOG_LEVEL, see above)."""
    stream = stream or sys.stderr
    fmt = (fmt or os.environ.get("BMM_LOG_FORMAT") or default_format(stream)).lower()
    if fmt not in ("json", "text"):
        raise ValueError(f"BMM_LOG_FORMAT must be json or text, not {fmt!r}")
    level = (level or os.environ.get("BMM_LOG_LEVEL") or "INFO").upper()
    out = logging.StreamHandler(stream)
    out.setFormatter(json_formatter() if fmt == "json" else text_formatter())
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = RequestIdQueueHandler(q)
    root = logging.getLogger()
    replaced, previous_level = list(root.handlers), root.level
    for old in replaced:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    listener = BatchingListener(q, out)
    listener.start()
    installed = Logging(handler, listener, replaced, previous_level)
    atexit.register(installed.stop)
    return installed
