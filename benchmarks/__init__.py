"""geoseg benchmarks: figures and ratios measured side by side in one run.

    python -m benchmarks            # every benchmark
    python -m benchmarks predict    # one of them (options after the name)
"""
