"""Where ivn_fast keeps what it builds or measures once per machine (the native cut's library,
the attention table)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$IVN_FAST_CACHE, else ~/.cache/ivn_fast (an empty variable counts as unset)."""
    return Path(os.environ.get("IVN_FAST_CACHE") or Path.home() / ".cache" / "ivn_fast")
