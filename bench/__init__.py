"""Benchmarks (`make bench`, `python -m bench`): each `bench/*_bench.py` module has a main()
that prints its own small table.  Ratios and counts measured in one run; never an assertion."""
