"""glibc keeps the memory a step frees for the next step (rfsearch.host_memory)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rfsearch.host_memory import keep_freed_memory, user_tuned_allocator

_GLIBC = sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver())

_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import torch
    from rfsearch.host_memory import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    def cycle():
        t = torch.empty(16 << 20)  # 64 MiB: over glibc's largest mmap threshold
        t.fill_(1.0)
    for _ in range(4):  # the heap settles (where each block lands) in a few cycles
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        cycle()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    import os

    done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    kept, faults = done.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not _GLIBC, reason="glibc's allocator only")
def test_a_tensor_freed_and_allocated_again_faults_no_pages_once_memory_is_kept():
    _, default = _faults("default")
    kept, faults = _faults("keep")
    assert kept
    pages = (64 << 20) // 4096
    assert default >= 5 * pages * 0.9  # glibc's default: fresh pages every time
    assert faults < pages // 10


@pytest.mark.skipif(not _GLIBC, reason="glibc's allocator only")
def test_a_users_own_malloc_tuning_stands(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert user_tuned_allocator()
    assert keep_freed_memory() is False
    kept, faults = _faults("keep", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert not kept and faults >= 5 * (64 << 20) // 4096 * 0.9
