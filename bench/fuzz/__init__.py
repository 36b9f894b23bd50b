"""The fuzz-and-fault campaign: `python -m bench.fuzz` (see __main__.py)."""
