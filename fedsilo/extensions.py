"""Extensions a silo's operator loads into its worker: modules that register more silo steps
(`fedsilo.handler.handles`) or strategies. Named by the operator (`fedsilo worker --extension`,
or FEDSILO_EXTENSIONS), never by a scenario: a scenario is data and must not run code."""

import importlib
import os

from fedsilo.errors import FedsiloError

EXTENSIONS_ENV = "FEDSILO_EXTENSIONS"


def load_extensions(modules: str | None = None) -> list[str]:
    """Import the comma-separated `modules` (default: FEDSILO_EXTENSIONS); returns their names."""
    names = [
        m.strip() for m in (modules if modules is not None else os.environ.get(EXTENSIONS_ENV, "")).split(",")
    ]
    for name in filter(None, names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise FedsiloError(
                f"extension {name!r} cannot be imported: {exc}; check {EXTENSIONS_ENV}"
            ) from None
    return [n for n in names if n]
