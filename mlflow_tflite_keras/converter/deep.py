"""Room for deep graphs: Keras builds a functional model's node map recursively
(``Function._build_map_helper``, a few Python frames per op), so a chain of a thousand ops
overflows Python's default recursion limit. This package's own graph walks are iterative;
for Keras', :func:`run_deep` runs the work in a thread with a large stack and a recursion
limit raised for the duration, restored when the last deep call ends.
"""

from __future__ import annotations

import sys
import threading

# Below this many ops Keras' recursion fits the default limit: run in the calling thread.
DEEP_OPS = 300
_FRAMES_PER_OP = 8  # Keras recursion frames per op, with margin
_STACK_BYTES_PER_OP = 96 * 1024
_MAX_STACK = 2**30  # virtual address space only, committed as used

_lock = threading.Lock()
_active = 0
_saved_limit = None


def _raise_limit(limit: int):
    global _active, _saved_limit
    with _lock:
        if _active == 0:
            _saved_limit = sys.getrecursionlimit()
        _active += 1
        if sys.getrecursionlimit() < limit:
            sys.setrecursionlimit(limit)


def _restore_limit():
    global _active
    with _lock:
        _active -= 1
        if _active == 0 and _saved_limit is not None:
            sys.setrecursionlimit(_saved_limit)


def run_deep(fn, depth: int, *args, **kwargs):
    """``fn(*args, **kwargs)``, given room for about ``depth`` nested Keras nodes.

    Shallow work runs directly. Deep work runs in a fresh thread whose stack fits the
    recursion; its result is returned and its exception re-raised here. Keras keeps some
    settings per thread (e.g. the dtype policy): the thread starts from Keras' defaults,
    which is what the converter builds with anyway (float32).
    """
    if depth < DEEP_OPS or threading.current_thread().name.startswith("tflite-keras-deep"):
        return fn(*args, **kwargs)
    limit = sys.getrecursionlimit() + _FRAMES_PER_OP * depth
    stack = min(_MAX_STACK, 64 * 2**20 + _STACK_BYTES_PER_OP * depth)
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            outcome["error"] = e

    _raise_limit(limit)
    try:
        with _lock:  # stack_size applies to threads started after it: set, start, reset
            previous = threading.stack_size(stack)
            try:
                worker = threading.Thread(target=target, name="tflite-keras-deep", daemon=True)
                worker.start()
            finally:
                threading.stack_size(previous)
        worker.join()
    finally:
        _restore_limit()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
