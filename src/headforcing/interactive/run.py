"""A live session run to its end: generate in the worker until done or stopped, the page up
until Ctrl-C (or, with ``stay_up=False``, until the run is done), then the video closed whole
and the server shut down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from headforcing.interactive.server import LiveServer
from headforcing.interactive.session import LiveSession


def serve_until_done(
    server: LiveServer,
    session: LiveSession,
    out: Path,
    *,
    stay_up: bool,
    report: Callable[[str], None],
) -> int:
    """Start ``session`` on ``server`` (its page already bound), wait for the end, close both;
    ``report`` says what happens and what was written to ``out``. The exit status: 1 when the
    run failed, 130/143 when a stop signal cut it short, else 0."""
    import time

    from headforcing.interrupts import deferred_interrupt, exit_code

    # generate in the worker until done or stopped; the page stays up until Ctrl-C
    session.start()
    stop = None
    try:
        while session.running:
            session.join(0.25)
        if stay_up:
            report("generation finished; the page stays up until Ctrl-C")
            while True:
                time.sleep(1)
    except KeyboardInterrupt as error:
        stop = error if session.running else None  # a stop after the run ended is the normal end
        report("stopping after the chunk in progress")
    finally:
        session.stop()
        try:
            with deferred_interrupt():  # the worker closes the video: let it finish the tail
                session.join()
        except KeyboardInterrupt as error:
            stop = stop or error
        server.shutdown()
        server.server_close()
    state = session.state()
    if state["frames_written"] == 0:  # stopped or failed before the first chunk: no file
        report(f"nothing was written to {out}: no chunk was finished")
    else:
        report(
            f"wrote {out} ({state['frames_written']} frames, {len(state['switches'])} prompt "
            "switches)"
        )
    if state["error"]:
        report(f"headforcing interactive: error: {state['error']}")
        return 1
    return exit_code(stop) if stop is not None else 0
