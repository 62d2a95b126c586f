"""rfsearch benchmarks: ``python -m benchmarks`` (``make bench``).

Every number is a ratio of two things measured side by side in one process: the variants of a
comparison run alternately (the order rotates every round), several rounds, and the median of each
is reported, so a busy machine slows both sides alike. See ``docs/performance.md``.
"""
