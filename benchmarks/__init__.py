"""aflow benchmarks: reproducible performance scenarios that print one JSON record per run.

    python -m benchmarks fanout            # start → 10,000 no-op tasks → join
    python -m benchmarks chain --n 200     # 200 no-op tasks in a line

See benchmarks/README.md for the keys of the record and how to compare two runs.
"""
