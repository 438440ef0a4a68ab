"""tpu_train's opt-in malloc settings: a large buffer freed by one step is reused by the next, not
unmapped and faulted in again (`tpu_train.host_memory`)."""

import json
import subprocess
import sys

import pytest

from tpu_train import host_memory

# In a fresh interpreter: import tpu_train, then from a worker thread (as XLA:CPU's executions allocate)
# malloc, touch and free a 256 MiB buffer three times, counting the minor page faults of each round.
PROBE = r"""
import ctypes, ctypes.util, json, resource, threading
import tpu_train
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 256 << 20, []

def step():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)
    libc.free(buffer)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

for _ in range(3):
    thread = threading.Thread(target=step)
    thread.start()
    thread.join()
print(json.dumps(faults))
"""


def _faults(malloc: str) -> list[int]:
    env = {"TPU_TRAIN_MALLOC": malloc, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_freed_buffers_are_reused_without_page_faults():
    reused, system = _faults("reuse"), _faults("system")
    # glibc's default maps fresh memory each round and faults it in again (every 4 KiB page, or every
    # 2 MiB one where transparent huge pages are always on); ours grows the heap in the first round and
    # reuses it in the later ones.
    assert max(reused[1:]) < (256 << 20) // 4096 // 100, reused
    assert max(reused[1:]) * 10 < min(system[1:]), (reused, system)


def test_the_default_leaves_malloc_alone_and_a_typo_is_named():
    assert host_memory.keep_freed_memory({}) is False
    assert host_memory.keep_freed_memory({"TPU_TRAIN_MALLOC": "system"}) is False
    with pytest.raises(ValueError, match="TPU_TRAIN_MALLOC='reused'"):
        host_memory.keep_freed_memory({"TPU_TRAIN_MALLOC": "reused"})
