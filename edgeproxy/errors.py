"""One exception hierarchy: each error knows the status to answer with and its Cache-Status detail.

Rules kept here:
- The shell turns any ``ProxyError`` into a short response with ``status``; nothing here writes bytes.
- Client errors close the connection after the answer (the framing of what follows can't be trusted).
- Origin errors are never stored; ``detail`` feeds ``Cache-Status: ...; detail=...`` and the access log.
"""

from __future__ import annotations


class ProxyError(Exception):
    status = 500
    detail = "internal"
    close = True

    def __init__(self, message: str = "", detail: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or "")
        if detail is not None:
            self.detail = detail


class ClientError(ProxyError):
    """Bad request."""

    status = 400
    detail = "bad-request"


class BadRequest(ClientError):
    """Bad request."""


class UriTooLong(ClientError):
    """Request target too long."""

    status = 414
    detail = "uri-too-long"


class HeadersTooLarge(ClientError):
    """Request header fields too large."""

    status = 431
    detail = "headers-too-large"


class BodyTooLarge(ClientError):
    """Request body too large."""

    status = 413
    detail = "body-too-large"


class ExpectationFailed(ClientError):
    """Unsupported Expect."""

    status = 417
    detail = "expectation-failed"


class VersionNotSupported(ClientError):
    """HTTP version not supported."""

    status = 505
    detail = "version"


class RequestTimeout(ClientError):
    """Request not received in time."""

    status = 408
    detail = "request-timeout"


class MisdirectedRequest(ClientError):
    """No site is configured for this host."""

    status = 421
    detail = "no-site"
    close = False


class LoopDetected(ClientError):
    """Request loop: this request already passed through this node."""

    status = 508
    detail = "loop"
    close = False


class Forbidden(ClientError):
    """Forbidden."""

    status = 403
    detail = "forbidden"
    close = False


class OriginError(ProxyError):
    """The origin could not be reached or answered badly."""

    status = 502
    detail = "origin-error"
    close = False


class OriginConnectError(OriginError):
    """Could not connect to the origin."""

    detail = "connect-error"


class OriginProtocolError(OriginError):
    """The origin sent an invalid response."""

    detail = "protocol-error"


class OriginTimeout(OriginError):
    """The origin did not answer in time."""

    status = 504
    detail = "timeout"


class PoolTimeout(OriginError):
    """No origin connection became free in time."""

    status = 503
    detail = "pool-timeout"
