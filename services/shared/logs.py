"""Structured JSON logs on stderr, one object per line, tagged with the service name."""

from __future__ import annotations

import json
import logging
import logging.config
import time

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


NOISY_LOGGERS = ("aiokafka", "faust", "mode", "kafka", "urllib3", "httpx", "httpcore")


def logging_dict_config(service: str, level: str = "INFO") -> dict:
    """dictConfig for JSON lines on stderr; also handed to Faust's worker, which replaces handlers."""
    quiet = logging.getLevelName(max(logging.WARNING, logging.getLevelName(level)))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "service": service}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["default"]},
        # Kafka client libraries log every fetch at DEBUG; building those records alone costs ~20%.
        "loggers": {name: {"level": quiet} for name in NOISY_LOGGERS},
    }


def configure_logging(service: str, level: str = "INFO") -> logging.Logger:
    logging.config.dictConfig(logging_dict_config(service, level))
    return logging.getLogger(service)
