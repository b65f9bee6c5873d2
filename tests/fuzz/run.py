"""Run one fuzz target under atheris (libFuzzer): ``python -m tests.fuzz.run TARGET [libFuzzer options]``.

Seeds from ``targets.SEEDS`` are written into the corpus directory (the first positional libFuzzer argument,
created by ``scripts/fuzz``) before starting. A crash leaves ``crash-*`` files that replay with the same command
followed by the file name.

With ``EDGEPROXY_SCANNER_DIR`` set (``scripts/fuzz`` sets it for the headscan target) the compiled head scanner is
loaded from that directory (its sanitizer build) instead of the tree's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

import edgeproxy.http

if os.environ.get("EDGEPROXY_SCANNER_DIR"):
    edgeproxy.http.__path__.insert(0, os.environ["EDGEPROXY_SCANNER_DIR"])
    from edgeproxy.http import _headscan

    assert _headscan.__file__.startswith(os.environ["EDGEPROXY_SCANNER_DIR"]), _headscan.__file__

with atheris.instrument_imports(include=["edgeproxy"]):
    from tests.fuzz.targets import SEEDS, TARGETS


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    corpus = next((Path(a) for a in args if not a.startswith("-")), None)
    if corpus is not None and corpus.is_dir():
        for i, seed in enumerate(SEEDS[name]):
            (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *args], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
