"""Timing shared by the PyTorch benchmark scripts: the device, its synchronisation, and the
median of timed runs after a warm-up (the same method as `imvar bench`)."""

import statistics
import time

import torch


def device_and_sync():
    """("cuda", torch.cuda.synchronize) with a GPU, else ("cpu", a no-op)."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda.synchronize
    return "cpu", lambda: None


def timed(runs, fn, sync):
    """Median milliseconds of `runs` calls of `fn` after one warm-up, synchronised around each."""
    fn()
    sync()
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
