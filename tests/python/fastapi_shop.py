"""The FastAPI twin of shop.py, for uvicorn `--fd 3`: `/order` remembers every order in
a module-level list when SHOP_LEAK=1."""
import os

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()
ORDERS = []
ORDER_BYTES = int(os.environ.get("SHOP_ORDER_BYTES", "65536"))


def remember_order(order_id):
    ORDERS.append(("order-%d:" % order_id) + "x" * ORDER_BYTES)


@app.get("/order", response_class=PlainTextResponse)
def order():
    if os.environ.get("SHOP_LEAK") == "1":
        remember_order(len(ORDERS))
    return "ok %d\n" % os.getpid()


@app.get("/health", response_class=PlainTextResponse)
def health():
    return "ok\n"
