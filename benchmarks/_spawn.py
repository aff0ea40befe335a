"""Run one benchmark variant in its own spawned process, so its peak memory is its own."""

import multiprocessing as mp


def measure(target, *args):
    """target(*args, queue) in a fresh process; returns what it put on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, queue))
    p.start()
    result = queue.get()
    p.join()
    return result
