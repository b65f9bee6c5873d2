"""Which parser backend serves each side: h11 (the reference) or httptools (``edgeproxy[fast]``).

The seams (``proxy/parser.py`` for requests, ``proxy/origin_parser.py`` for responses) define what a backend must
do; the backends import their seam. Choosing one lives here, apart from both, so no seam imports its own backends
(which would tie each pair in an import cycle). httptools is imported on first use only: it is an optional extra.
"""

from __future__ import annotations

from edgeproxy.proxy.origin_parser import H11ResponseParser, ResponseParser
from edgeproxy.proxy.parser import H11Parser, Limits, RequestParser

REQUEST_BACKENDS: dict[str, type] = {"h11": H11Parser}
RESPONSE_BACKENDS: dict[str, type] = {"h11": H11ResponseParser}


def make_parser(name: str, limits: Limits) -> RequestParser:
    """A request parser (client side) of backend ``name``."""
    if name == "httptools" and name not in REQUEST_BACKENDS:
        from edgeproxy.proxy.parser_httptools import HttptoolsParser

        REQUEST_BACKENDS[name] = HttptoolsParser
    return REQUEST_BACKENDS[name](limits)


def make_response_parser(name: str) -> ResponseParser:
    """A response parser (origin side) of backend ``name``."""
    if name == "httptools" and name not in RESPONSE_BACKENDS:
        from edgeproxy.proxy.origin_parser_httptools import HttptoolsResponseParser

        RESPONSE_BACKENDS[name] = HttptoolsResponseParser
    return RESPONSE_BACKENDS[name]()
