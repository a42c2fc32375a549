"""A CPython worker for the Python-frames test: ready over sd_notify, then a thread of
its own (not the main thread) builds 48 MiB of strings in `fill_cache` and keeps them,
and the worker logs when they are held. SIGTERM ends it."""
import os
import signal
import sys
import threading

from worker_common import log, notify_ready

CACHE = []


def fill_cache(entries):
    for i in range(entries):
        CACHE.append(("entry-%d:" % i) + "y" * 65536)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
notify_ready()
filler = threading.Thread(target=fill_cache, args=(768,), name="filler")
filler.start()
filler.join()
log("python worker holds", pid=os.getpid(), entries=len(CACHE))
while True:
    signal.pause()
