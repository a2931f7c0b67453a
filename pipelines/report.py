"""What the coordinator reports, shown in Prefect: the round table in the terminal and as a
markdown artifact, a progress artifact over the job's rounds, and Prefect events.

Events (hang Prefect automations on them, e.g. a notification):
  fedsilo.champion.moved   the job's model became the registered `champion`
  fedsilo.champion.kept    it did not; the payload's `reason` says why
  fedsilo.silo.left-out    a silo did not answer or its update was rejected in a round
Each names the resource `fedsilo.scenario.<name>` (label `fedsilo.job`: the job) and carries the
coordinator's details (silo, round, reason; model, version) as its payload.

Artifact keys (`<scenario>-progress`, `<scenario>-rounds`) come from fedsilo.names.artifact_key:
Prefect allows only lower-case letters, digits and dashes there, the schema allows `_` too.
"""

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.events import emit_event
from rich.console import Console
from rich.table import Table

from fedsilo.names import artifact_key
from fedsilo.records import RoundRecord
from fedsilo.scenario import Scenario


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_round(row: RoundRecord, silos: list[str]) -> None:
    """One round's table: each silo's local and global accuracy, the global accuracy, seconds."""
    title = f"round {row.round_index}" + (
        " (starting model, before federation)" if row.round_index == 0 else f" of {row.rounds}"
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


def markdown(scenario: str, rows: list[RoundRecord], silos: list[str], footer: str) -> str:
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


class PrefectReporter:
    """The coordinator's reporter inside a Prefect flow run."""

    def __init__(self, scenario: Scenario, job: str):
        self.scenario, self.job = scenario, job
        self.progress_id = create_progress_artifact(
            0.0, key=artifact_key(scenario.name, "progress"), description=f"Rounds completed of job {job}"
        )

    def round_done(self, record: RoundRecord, history: list[RoundRecord]) -> None:
        print_round(record, self.scenario.silo_names())
        if record.round_index == 0:
            return
        done = 100.0 * record.round_index / record.rounds
        update_progress_artifact(self.progress_id, done, f"Round {record.round_index} of {record.rounds}")
        footer = f"Job {self.job}: round {record.round_index} of {record.rounds}."
        self._table(history, footer)

    def event(self, name: str, detail: dict[str, str]) -> None:
        emit_event(
            name,
            resource={
                "prefect.resource.id": f"fedsilo.scenario.{self.scenario.name}",
                "prefect.resource.name": self.scenario.name,
                "fedsilo.job": self.job,
            },
            payload=detail,
        )

    def finished(self, summary: str, history: list[RoundRecord], failed: bool) -> None:
        self._table(history, summary)
        if not failed:
            update_progress_artifact(self.progress_id, 100.0, f"Job {self.job} finished")

    def _table(self, history: list[RoundRecord], footer: str) -> None:
        create_markdown_artifact(
            markdown(self.scenario.name, history, self.scenario.silo_names(), footer),
            key=artifact_key(self.scenario.name, "rounds"),
            description=f"Accuracy by round of job {self.job}",
        )
