"""Benchmarks run by `make bench`: each module's ``run()`` returns the lines to print."""
