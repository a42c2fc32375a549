"""A CPython worker that keeps spawning children while the agent samples and dumps it:
`subprocess` children (exec'd, with and without close_fds, some of them Python with the
preload inherited), `os.fork()` children that allocate and exit, and one forked child
that keeps running (and allocating) alongside the worker. Each child reports whether it
could see the worker's control socket; then 100 quick forks each look at the control
socket's number while they allocate, since the probe starts a child's own channel on
its first allocation (which once put a socket under that number for a moment). The
worker logs a summary when done."""
import json
import os
import signal
import subprocess
import sys
import time

from worker_common import log, notify_ready

ROUNDS = int(sys.argv[1])
CHILD = r"""
import json, os, stat
def is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
fd = int(os.environ.get("HEAPWARDEN_CONTROL_FD", "4"))
print(json.dumps({"claims": os.environ.get("HEAPWARDEN_WORKER_PID") == str(os.getpid()),
                  "control_fd_open": is_socket(fd)}), flush=True)
"""


def control_fd_open():
    try:
        os.fstat(int(os.environ["HEAPWARDEN_CONTROL_FD"]))
        return True
    except (OSError, KeyError, ValueError):
        return False


def long_lived_child(beats_w):
    # Keeps allocating (through jemalloc, inherited from the worker) for a while: a
    # deadlock in the allocator after fork would stop the heartbeats.
    kept = []
    for beat in range(40):
        kept.append(bytearray(256 * 1024))
        kept = kept[-16:]
        os.write(beats_w, b"x")
        time.sleep(0.05)
    os._exit(0 if not control_fd_open() else 3)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
notify_ready()
log("python worker ready", pid=os.getpid())
beats_r, beats_w = os.pipe()
long_lived = os.fork()
if long_lived == 0:
    os.close(beats_r)
    long_lived_child(beats_w)
os.close(beats_w)
forks = fork_failures = spawned = spawn_failures = claimed = inherited_fd = 0
fork_statuses = []
for round_no in range(ROUNDS):
    for close_fds in (True, False):
        out = subprocess.run([sys.executable, "-c", CHILD], close_fds=close_fds,
                             capture_output=True, text=True, timeout=30)
        spawned += 1
        if out.returncode != 0:
            spawn_failures += 1
            log("subprocess failed", stderr=out.stderr[-400:])
            continue
        report = json.loads(out.stdout)
        claimed += report["claims"]
        inherited_fd += report["control_fd_open"]
    subprocess.run(["/bin/sh", "-c", "true"], check=True)
    pid = os.fork()
    if pid == 0:
        junk = [bytes(1000) for _ in range(2000)]
        os._exit(0 if not control_fd_open() else 3)
    forks += 1
    _, status = os.waitpid(pid, 0)
    if status != 0:
        fork_failures += 1
        fork_statuses.append(status)
# While a child allocates (its probe starts the child's own channel then), the number
# of the worker's channel stays closed: never a socket, not even for a moment.
saw_socket = 0
for _ in range(100):
    pid = os.fork()
    if pid == 0:
        junk = []
        end = time.monotonic() + 0.02
        while time.monotonic() < end:
            junk.append(bytes(1000))
            if control_fd_open():
                os._exit(4)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    saw_socket += status == 4 << 8
beats = 0
while True:
    chunk = os.read(beats_r, 64)
    if not chunk:
        break
    beats += len(chunk)
_, status = os.waitpid(long_lived, 0)
log("python worker children done", forks=forks, fork_failures=fork_failures,
    fork_statuses=fork_statuses, children_saw_the_channel=saw_socket,
    subprocesses=spawned, subprocess_failures=spawn_failures, claimed_in_child=claimed,
    control_fd_inherited=inherited_fd, long_lived_beats=beats,
    long_lived_status=status, worker_still_has_fd=control_fd_open())
while True:
    signal.pause()
