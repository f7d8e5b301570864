"""`python -m pipeline.cli`: the same as the `lookfirst` console script."""

from __future__ import annotations

from pipeline.cli import main

main()
