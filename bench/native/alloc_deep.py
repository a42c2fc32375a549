"""Worst case for the native probe's Python frames, for bench_native: 64 KiB strings made
30 Python calls deep and dropped at once, so about one allocation in eight is sampled
and each sample walks 30 frames; prints allocations per second."""
import json
import sys
import time


def allocate(depth, n):
    if depth:
        return allocate(depth - 1, n)
    started = time.perf_counter()
    for i in range(n):
        block = "x" * 65536
        del block
    return n / (time.perf_counter() - started)


print(json.dumps({"allocations_per_second": round(allocate(30, int(sys.argv[1])))}))
