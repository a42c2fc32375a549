"""A CPython worker for the native-probe tests: ready over sd_notify, then on SIGUSR1 it
builds and keeps a known set of objects and logs how many bytes they take
(sys.getsizeof of every object plus the list), so the test can compare the heap figure
the agent reports with what the program holds. SIGTERM ends it."""
import json
import os
import random
import signal
import socket
import sys


def notify_ready():
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr:
        target = "\0" + addr[1:] if addr.startswith("@") else addr
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", target)


def log(msg, **fields):
    print(json.dumps(dict(msg=msg, **fields)), flush=True)


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
held = ["x" * rnd.randrange(100, 300) for _ in range(int(sys.argv[1]))]
total = sys.getsizeof(held) + sum(sys.getsizeof(s) for s in held)
log("python worker holds", bytes=total, objects=len(held))
while True:
    signal.pause()
