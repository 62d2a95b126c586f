"""rfsearch benchmarks: ``python -m benchmarks`` (``make bench``).

Every number is a ratio of two things measured side by side in one process: the variants of a
comparison run alternately (the order rotates every round), several rounds, and the median of each
is reported, so a busy machine slows both sides alike. See ``docs/performance.md``.
"""

import os

# c10's own warnings (e.g. the profiler's "Memory block of unknown size was allocated before the
# profiling started", on every CPU peak-memory reading) go to stderr unless the level is set
# before torch is loaded: the output holds the tables only.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
