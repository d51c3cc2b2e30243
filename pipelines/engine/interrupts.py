"""How a run ends when the user stops it: SIGTERM is handled like Ctrl-C, and a library that turns
the interruption into an error of its own (DuckDB's 'Query interrupted') still ends the run as
interrupted. The signal handler (the CLI's) calls :func:`request_stop` before it raises."""

from __future__ import annotations


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is recorded as interrupted and can be resumed."""


_stop_requested = False


def request_stop() -> None:
    """Called by the signal handler before it raises :class:`Terminated`: a library that catches
    the exception and raises its own (DuckDB's 'Query interrupted') still ends the run as
    interrupted."""
    global _stop_requested
    _stop_requested = True


def ended_by_user(e: BaseException) -> bool:
    return isinstance(e, KeyboardInterrupt) or _stop_requested


def as_interruption(e: BaseException) -> BaseException:
    """The exception to raise for ``e``: a Terminated in place of what a library made of it."""
    return e if isinstance(e, KeyboardInterrupt) or not _stop_requested else Terminated()
