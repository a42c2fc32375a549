"""A small Flask shop for the pre-fork tests: `/order` remembers every order in a
module-level list when this process is a leaker (the bug these tests catch), `/health`
answers without allocating anything to keep. SHOP_LEAK_KIND=mmap leaks anonymous
mappings instead of strings: memory outside the probed heap."""
import mmap
import os

from flask import Flask

app = Flask(__name__)
ORDERS = []
ORDER_BYTES = int(os.environ.get("SHOP_ORDER_BYTES", "65536"))


def leaking():
    # gunicorn's post_fork (gunicorn_leak_one.py) marks one child; otherwise every
    # process leaks when SHOP_LEAK=1.
    return os.environ.get("SHOP_LEAK") == "1"


def remember_order(order_id):
    if os.environ.get("SHOP_LEAK_KIND") == "mmap":
        # Memory no malloc sees (as a library's own allocator would hold it).
        region = mmap.mmap(-1, ORDER_BYTES)
        region.write(b"x" * ORDER_BYTES)
        ORDERS.append(region)
        return
    ORDERS.append(("order-%d:" % order_id) + "x" * ORDER_BYTES)


@app.route("/order")
def order():
    if leaking():
        remember_order(len(ORDERS))
    return "ok %d\n" % os.getpid()


@app.route("/health")
def health():
    return "ok\n"
