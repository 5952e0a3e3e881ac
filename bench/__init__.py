"""streamgauge's benchmarks, each against a yardstick measured in the same run.

Run from the repository root with the project's virtualenv: ``python -m bench --help``.
"""
