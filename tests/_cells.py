"""Cell functions for launcher tests: importable by spawned workers (a test module's are too, but
these need neither torch nor fdalign)."""

import time


def interrupted_cells(cell: int) -> dict:
    """Cell 0 is interrupted at once (as if Ctrl-C reached that worker alone); the others wait up to 20 s
    for the Ctrl-C the sweep forwards, then take ``cell`` x 0.4 s to "checkpoint" before saying
    interrupted. A cell that never hears it finishes: the test sees it among the ended cells."""
    if cell == 0:
        raise KeyboardInterrupt
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        time.sleep(0.4 * cell)
        raise
    return {"state": "done"}
