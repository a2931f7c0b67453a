"""The weight-file ledger: every weight file a job wrote or was sent, deleted once it is not needed.

The coordinator holds only URIs it derived itself (fedsilo.paths.JobPaths) for a silo and round,
so a reply that names another file (the global model, another silo's update) deletes nothing.
Whatever happens, `delete_all` removes what is still held at the end of the job, and any file a
silo left out of a step may still write late.
"""

import logging

from fedsilo.messages import WeightRef
from fedsilo.weights import delete_state, delete_uri


class WeightLedger:
    """Weight files the job holds, by URI."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter):
        self.log = log
        self._held: dict[str, WeightRef] = {}
        self._late: set[str] = set()

    def hold(self, ref: WeightRef) -> WeightRef:
        self._held[ref.uri] = ref
        return ref

    def release(self, ref: WeightRef | None) -> None:
        """Delete a held file the job no longer needs (MLflow holds every logged global model)."""
        if ref is not None and self._held.pop(ref.uri, None) is not None:
            delete_state(ref)

    def expect_late(self, uri: str) -> None:
        """A silo given up on may still write here: delete it at the end, unread."""
        self._late.add(uri)

    def delete_all(self) -> None:
        for ref in list(self._held.values()):
            try:
                self.release(ref)
            except Exception as exc:  # the store may be what failed the job
                self.log.warning("could not delete %s: %s", ref.uri, exc)
                self._held.pop(ref.uri, None)
        for uri in self._late - set(self._held):
            try:
                delete_uri(uri)
            except Exception as exc:  # most were never written
                self.log.debug("nothing deleted at %s: %s", uri, exc)
