"""Round tables for the terminal and the Prefect markdown artifact (formatting only)."""

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table


@dataclass
class RoundRow:
    round_index: int
    global_accuracy: float
    silo_local: dict[str, float | None] = field(default_factory=dict)
    silo_global: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_round(row: RoundRow, silos: list[str]) -> None:
    """One round's table: each silo's local and global accuracy, the global accuracy, seconds."""
    title = f"round {row.round_index}" + (
        " (pretrained model, before federation)" if row.round_index == 0 else ""
    )
    table = Table(title=title, title_justify="left")
    for column in ("silo", "local model", "global model"):
        table.add_column(column, justify="left" if column == "silo" else "right")
    for silo in silos:
        local = row.silo_local.get(silo)
        table.add_row(
            silo, "missing" if silo in row.missing else _pct(local), _pct(row.silo_global.get(silo))
        )
    table.add_row("[bold]all silos[/bold]", "", f"[bold]{_pct(row.global_accuracy)}[/bold]")
    table.caption = f"{row.seconds:.1f}s"
    Console().print(table)


def markdown(scenario: str, rows: list[RoundRow], silos: list[str], footer: str) -> str:
    """The per-round table as markdown, for a Prefect artifact."""
    header = (
        "| round | " + " | ".join(f"{s} local / global" for s in silos) + " | global (all silos) | seconds |"
    )
    lines = [f"# {scenario}: accuracy by round", "", header, "|" + "---|" * (len(silos) + 3)]
    for row in rows:
        cells = [
            "missing"
            if s in row.missing
            else f"{_pct(row.silo_local.get(s))} / {_pct(row.silo_global.get(s))}"
            for s in silos
        ]
        lines.append(
            f"| {row.round_index} | "
            + " | ".join(cells)
            + f" | {_pct(row.global_accuracy)} | {row.seconds:.1f} |"
        )
    return "\n".join(lines + ["", footer])
