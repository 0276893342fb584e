"""Cell functions for launcher tests: importable by spawned workers (a test module's are too, but
these need neither torch nor fdalign)."""

import os
import time

WAIT_S = 600  # a bound, not a race: the forwarded Ctrl-C ends the wait however loaded the machine is


def interrupted_cells(cell: int) -> dict:
    """Cell 0 is interrupted at once (as if Ctrl-C reached that worker alone); the others wait for the
    Ctrl-C the sweep forwards (up to WAIT_S), then take ``cell`` x 0.4 s to "checkpoint" before saying
    interrupted (a second Ctrl-C would land in that time). A cell that never hears it finishes: the test
    sees it among the ended cells."""
    if cell == 0:
        raise KeyboardInterrupt
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        time.sleep(0.4 * cell)
        raise
    return {"state": "done"}


def visible_devices(cell: int) -> dict:
    """What the worker running ``cell`` sees: its CUDA_VISIBLE_DEVICES and its pid."""
    return {"state": "done", "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
