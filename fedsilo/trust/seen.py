"""Request ids a silo has already served, kept across restarts: a replayed request is refused.

SQLite (one row per request id with its expiry) because its inserts are atomic across processes:
two runs of one silo handed the same request cannot both take it. Ids are kept a day past their
expiry, after which the request would be refused as expired anyway.
"""

import sqlite3
import time
from pathlib import Path

KEEP_AFTER_EXPIRY_SECONDS = 86_400


class SeenRequests:
    """The request ids one silo has taken; `path` None keeps them in memory (per-job keys)."""

    def __init__(self, path: Path | str | None):
        target = ":memory:"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = str(path)
        self._db = sqlite3.connect(target, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (request TEXT PRIMARY KEY, expires REAL)")
        if path is not None:
            Path(path).chmod(0o600)

    def first_time(self, request: str, expires: float) -> bool:
        """Record `request` as taken; False when it was taken before (a replay)."""
        now = time.time()
        self._db.execute("DELETE FROM seen WHERE expires < ?", (now - KEEP_AFTER_EXPIRY_SECONDS,))
        try:
            self._db.execute("INSERT INTO seen VALUES (?, ?)", (request, expires))
        except sqlite3.IntegrityError:
            return False
        return True
