# gunicorn config for the `workers = 3` test: only the first forked child leaks, and it
# says which one it is.
import os
import sys


def post_fork(server, worker):
    if worker.age == 1:
        os.environ["SHOP_LEAK"] = "1"
        print("shop leaker pid %d" % os.getpid(), file=sys.stderr, flush=True)
    else:
        os.environ.pop("SHOP_LEAK", None)
