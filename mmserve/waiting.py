"""Waiting, made visible: queue tickets, and status lines for streams that wait for a model."""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import Future, TimeoutError
from dataclasses import dataclass, field


@dataclass(eq=False)
class Waiter:
    """One request waiting for a turn on a model (the manager keeps these in arrival order)."""

    model: str
    since: float = field(default_factory=time.monotonic)
    admitted: bool = False


@dataclass
class Ticket:
    """Handed to the manager through `current_ticket`, so a route can follow its request."""

    waiter: Waiter | None = None


current_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "mmserve_ticket", default=None
)


def start_with_status(start, manager, model: str, interval: float):
    """Run `start()` (which waits for a turn and a load, then returns a stream) in a thread.

    Yields, every `interval` seconds while it waits, a status dict
    {"status": "loading", "model", "stage", "progress", "queue_position", "seconds"},
    and finally ("ready", value). Errors of `start()` are raised from the generator.
    Closing the generator early closes the stream once it arrives (nothing leaks).
    """
    ticket = Ticket()
    future: Future = Future()
    t0 = time.monotonic()

    def run() -> None:
        current_ticket.set(ticket)
        try:
            future.set_result(start())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting generator
            future.set_exception(exc)

    threading.Thread(target=run, name=f"start-{model}", daemon=True).start()
    finished = False
    try:
        while True:
            try:
                value = future.result(timeout=interval)
            except TimeoutError:
                yield wait_status(manager, model, ticket, t0)
                continue
            finished = True
            yield ("ready", value)
            return
    finally:
        if not finished:
            future.add_done_callback(_close_result)


def _close_result(future: Future) -> None:
    """Close what `start()` returned (a stream, or a tuple holding one) for a client gone."""
    if future.exception() is not None:
        return
    value = future.result()
    for item in value if isinstance(value, tuple) else (value,):
        if hasattr(item, "close"):
            item.close()


def first_ready(waiting):
    """Advance `start_with_status` once: (stream, None) when it was ready within the first
    interval (its errors raise here, before any byte is sent, so they get their own status),
    else (None, first status dict) and the caller streams the rest of `waiting`."""
    item = next(waiting)
    if isinstance(item, tuple):
        return item[1], None
    return None, item


def wait_status(manager, model: str, ticket: Ticket, t0: float) -> dict:
    """Where a waiting request stands: its queue position, or the model's load stage."""
    position = manager.queue_position(ticket.waiter) if ticket.waiter else None
    stage = manager.stages.get(model)
    return {
        "status": "loading",  # waiting for a turn (queue_position) or for the load (stage)
        "model": model,
        "stage": stage["stage"],
        "progress": stage["progress"],
        "queue_position": position,
        "seconds": round(time.monotonic() - t0, 1),
    }
