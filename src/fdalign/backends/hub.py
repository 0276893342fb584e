"""Whether a download can work before one is tried: offline switches and a quick connection probe.

Without network, huggingface_hub and urllib retry for about a minute before they fail; a checkpoint
that is not in the local cache and a host that does not answer within seconds is an error at once.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_switch() -> str | None:
    """The set environment variable that forbids the Hub (``HF_HUB_OFFLINE=1``, ...), or None."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds (run in a
    thread, so that a hanging DNS lookup is cut off too)."""
    u = urlparse(url)
    host, port = u.hostname or "", u.port or (80 if u.scheme == "http" else 443)
    result: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


__all__ = ["OFFLINE_VARS", "hub_endpoint", "host_reachable", "offline_switch"]
