"""Benchmarks: each module reports ratios against a baseline measured in the same run (`make bench`)."""
