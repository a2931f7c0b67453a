"""Prefect flows and tasks that compose the fedsilo engine. Thin: no numerics here."""
