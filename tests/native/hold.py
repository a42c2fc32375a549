"""A CPython worker for the native-probe tests: ready over sd_notify, then on SIGUSR1 it
builds and keeps a known set of objects (the strings and byte buffers a cache holds) and
logs how many bytes they take: `bytes` is what Python asked for (sys.getsizeof of every
object plus the list), `usable_bytes` what the allocator handed out for them
(malloc_usable_size, i.e. jemalloc's size classes). SIGTERM ends it."""
import ctypes
import gc
import os
import random
import signal
import sys

from worker_common import log, notify_ready


requested = False


def on_usr1(*_):
    global requested
    requested = True


signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
notify_ready()
log("python worker ready", pid=os.getpid(), pythonmalloc=os.environ.get("PYTHONMALLOC"))
while not requested:
    # Returns after any handled signal: a signal taken by a thread Python does not know
    # would leave the worker here forever.
    signal.pause()
rnd = random.Random(7)
count = int(sys.argv[1])
held = ["x" * rnd.randrange(20, 2000) for _ in range(count)]
held += [bytes(rnd.randrange(1000, 65536)) for _ in range(count // 30)]
requested = sys.getsizeof(held) + sum(sys.getsizeof(o) for o in held)
# With PYTHONMALLOC=malloc an untracked object (str, bytes) starts at its malloc block.
usable_size = ctypes.CDLL(None).malloc_usable_size
usable_size.restype = ctypes.c_size_t
usable_size.argtypes = [ctypes.c_void_p]
usable = sys.getsizeof(held) + sum(usable_size(id(o)) for o in held if not gc.is_tracked(o))
log("python worker holds", bytes=requested, usable_bytes=usable, objects=len(held))
while True:
    signal.pause()
