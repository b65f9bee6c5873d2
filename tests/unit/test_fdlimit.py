"""The open-files check: what the connection limits need, and the warning when the limit is below it."""

from __future__ import annotations

import resource

import pytest

from edgeproxy.config import config_from_dict
from edgeproxy.fdlimit import RESERVED_FDS, fds_needed, shortfall

DEFAULTS = config_from_dict({})
SMALL = config_from_dict({"server": {"max_connections": 1000}, "origin": {"max_connections": 100}})


def test_fds_needed_counts_both_sides_and_a_reserve():
    assert fds_needed(DEFAULTS) == 20000 + 1024 + RESERVED_FDS
    assert fds_needed(SMALL) == 1000 + 100 + RESERVED_FDS


@pytest.mark.parametrize(
    ("config", "limit", "warns"),
    [
        (DEFAULTS, 65536, False),
        (DEFAULTS, resource.RLIM_INFINITY, False),
        (DEFAULTS, 20000, True),  # LimitNOFILE=65536 capped by a container's hard limit
        (SMALL, 1164, False),
        (SMALL, 1163, True),
        (SMALL, 1024, True),  # a shell's usual soft limit
    ],
)
def test_shortfall(config, limit: int, warns: bool):
    message = shortfall(config, limit)
    assert (message is not None) == warns
    if message:
        assert message.startswith(f"open files limit is {limit}, below the {fds_needed(config)} that")
        assert "LimitNOFILE=" in message
