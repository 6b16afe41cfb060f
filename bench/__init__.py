"""Operational runs that are not benchmarks and not unit tests (``bench/chaos.py``)."""
