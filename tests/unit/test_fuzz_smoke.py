"""The fuzz targets (tests/fuzz/targets.py) over a few thousand seeded random inputs each: no atheris needed.

Inputs are the targets' seeds, seeds with a few bytes changed, inserted or cut, and plain random bytes, from
``random.Random`` with a fixed seed, so a failure replays exactly; ``scripts/fuzz`` runs the same targets under
atheris for minutes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.fuzz.targets import SEEDS, TARGETS

RUNS = 3000
INTERESTING = [b"\r\n", b"\r", b"\n", b"\x00", b" ", b"\t", b":", b",", b";", b"=", b'"', b"\\", b"0", b"9", b"-",
               b"\x80", b"\xff", b"\r\n\r\n", b"chunked", b"content-length: ", b"transfer-encoding: ", b"{", b"}",
               b"[", b"]", b"null", b"true", b"1e999", b"max-age=", b"private="]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(out))
        op = rng.randrange(4)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[pos:pos] = rng.choice(INTERESTING)
        elif op == 2:
            del out[pos:pos + rng.randint(1, 8)]
        else:
            out[pos:pos] = out[rng.randint(0, len(out)):][:16]
    return bytes(out)


def inputs(name: str) -> Iterator[bytes]:
    rng = random.Random(f"edgeproxy-fuzz-{name}")
    seeds = SEEDS[name]
    yield from seeds
    for i in range(RUNS):
        if i % 4 == 3:
            yield rng.randbytes(rng.randint(0, 200))
        else:
            yield mutate(rng, rng.choice(seeds))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_survives_seeded_random_inputs(name: str) -> None:
    target = TARGETS[name]
    for data in inputs(name):
        try:
            target(data)
        except Exception as e:
            raise AssertionError(f"{name} crashed on {data!r}") from e
