"""Performance scripts (not tests): each prints its figures as ratios measured side by side in one
run and exits non-zero when one of its checks fails. See ``benchmarks/README.md``."""
