"""What the Python test workers share: sd_notify readiness and JSON log lines (which the
agent relays as records). Imported from the scripts' own directory."""
import json
import os
import socket


def notify_ready():
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr:
        target = "\0" + addr[1:] if addr.startswith("@") else addr
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", target)


def log(msg, **fields):
    print(json.dumps(dict(msg=msg, **fields)), flush=True)
