"""Run the benchmarks: `python -m benchmarks [NAME [OPTIONS]]` (or `./run bench`)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "predict": "benchmarks.bench_predict",
    "vectorize": "benchmarks.bench_vectorize",
    "workflow": "benchmarks.bench_workflow",
}


def main(argv: list[str]) -> None:
    names = [argv[0]] if argv and argv[0] in BENCHMARKS else list(BENCHMARKS)
    rest = argv[1:] if argv and argv[0] in BENCHMARKS else argv
    if rest and rest[0] in ("-h", "--help") and not (argv and argv[0] in BENCHMARKS):
        print(__doc__.strip() + "\nbenchmarks: " + ", ".join(BENCHMARKS))
        return
    for name in names:
        print(f"== {name} ==", flush=True)
        importlib.import_module(BENCHMARKS[name]).main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
