"""serving.limits.ClientErrorLog: BentoML's per-request error log, one line for a client's mistake."""

from __future__ import annotations

import logging
import sys

from bentoml.exceptions import BadInput, InternalServerError
from pydantic import BaseModel, ValidationError

from serving.limits import BENTOML_REQUEST_LOG, ClientErrorLog, quiet_client_errors


class Body(BaseModel):
    texts: list[str]


def record_for(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except BaseException:
        return logging.LogRecord(
            BENTOML_REQUEST_LOG,
            logging.ERROR,
            __file__,
            1,
            "Exception on %s [%s]",
            ("/classify", "POST"),
            sys.exc_info(),
        )


def validation_error() -> ValidationError:
    try:
        Body.model_validate({"texts": 5})
    except ValidationError as error:
        return error
    raise AssertionError("the body validated")


def test_a_validation_error_becomes_one_info_line_naming_it():
    record = record_for(validation_error())
    assert ClientErrorLog().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    line = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert line.startswith("INFO client error on /classify [POST]: ValidationError: 1 validation error for Body")
    assert "\n" not in line


def test_a_4xx_bentoml_error_is_a_client_error_and_keeps_percent_signs():
    record = record_for(BadInput("100% wrong"))
    ClientErrorLog().filter(record)
    assert logging.Formatter("%(message)s").format(record) == "client error on /classify [POST]: BadInput: 100% wrong"


def test_server_errors_keep_their_traceback():
    for error in (InternalServerError("model failed"), RuntimeError("boom")):
        record = record_for(error)
        assert ClientErrorLog().filter(record)
        assert record.levelno == logging.ERROR and record.exc_info is not None
        assert "Traceback" in logging.Formatter().format(record)


def test_installed_once_on_bentomls_request_logger():
    logger = logging.getLogger(BENTOML_REQUEST_LOG)
    quiet_client_errors()
    quiet_client_errors()
    assert sum(isinstance(f, ClientErrorLog) for f in logger.filters) == 1
