"""Matrix errors: every failure a client sees is `{"errcode", "error"}` with a status."""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    """An error the client is told about, with the HTTP status and Matrix errcode."""

    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.error, **self.extra}


def forbidden(msg: str, **extra: Any) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", msg, **extra)


def not_found(msg: str = "Not found") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", msg)


def bad_json(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


def invalid_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def missing_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", msg)


def unrecognized(msg: str = "Unrecognized request", status: int = 404) -> MatrixError:
    return MatrixError(status, "M_UNRECOGNIZED", msg)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(
        429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=retry_after_ms
    )
