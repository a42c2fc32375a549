"""CPython allocation loop for bench_native: builds small dicts, strings and lists and
drops them in batches (the churn of a request handler); prints objects per second."""
import json
import sys
import time

n = int(sys.argv[1])
keep = []
started = time.perf_counter()
for i in range(n):
    keep.append({"id": i, "name": "item-%d" % i, "tags": [i, i + 1, "x" * (i % 64)]})
    if len(keep) >= 1000:
        keep = []
elapsed = time.perf_counter() - started
print(json.dumps({"objects_per_second": round(n / elapsed)}))
