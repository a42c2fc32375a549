# gunicorn config: only the first forked child leaks (`workers = 3` tests).
def post_fork(server, worker):
    import os
    if worker.age == 1:
        os.environ["SHOP_LEAK"] = "1"
    else:
        os.environ.pop("SHOP_LEAK", None)
