"""Run one fuzz target under atheris (libFuzzer): ``python -m tests.fuzz.run TARGET [libFuzzer options]``.

Seeds from ``targets.SEEDS`` are written into the corpus directory (the first positional libFuzzer argument,
created by ``scripts/fuzz``) before starting. A crash leaves ``crash-*`` files that replay with the same command
followed by the file name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

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
