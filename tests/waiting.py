"""Waits for tests that talk to real ZeroMQ sockets, which deliver asynchronously."""

import time


def wait_until(predicate, timeout_s=10.0, poll_s=0.02):
    """Call predicate until it returns true; return whether it did within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def drain(subscriber, expected, timeout_s=10.0):
    """Return up to `expected` alert messages (those with a seq) from a GapFillingSubscriber."""
    received = []
    deadline = time.monotonic() + timeout_s
    while len(received) < expected and time.monotonic() < deadline:
        message = subscriber.receive(timeout_s=0.3)
        if message is not None and message.seq is not None:
            received.append(message)
    return received
