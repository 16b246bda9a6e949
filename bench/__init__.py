"""The benchmark (bench/run.py); a package so mypy checks it with the rest."""
