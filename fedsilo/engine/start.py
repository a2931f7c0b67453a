"""Where a job starts: a new job's round 0 (pretrained model or warm start from the champion), or
an interrupted job's last completed round (resume)."""

from safetensors.torch import load_file

from fedsilo.data import order_labels
from fedsilo.engine.ledger import WeightLedger
from fedsilo.errors import JobNotFound
from fedsilo.messages import DataSummary, WeightRef
from fedsilo.paths import JobPaths
from fedsilo.personal import check_patterns
from fedsilo.records import ResumePoint
from fedsilo.scenario import Scenario
from fedsilo.silo import initial_state
from fedsilo.weights import copy_file, same_layout, write_state


def open_job(tracker, resume_job: str, retrying: bool) -> ResumePoint | None:
    """Start the job's runs, or take up an interrupted job's: `resume_job` must exist (JobNotFound
    otherwise); a retry of a flow run resumes its own job when it completed a round, else starts it."""
    if resume_job or retrying:
        try:
            return tracker.attach()
        except JobNotFound:
            if resume_job:
                raise
    tracker.start()
    return None


def starting_point(
    scenario: Scenario, tracker, paths: JobPaths, ledger: WeightLedger, input_shape: tuple[int, ...]
) -> tuple[WeightRef, str]:
    """Round 0's global model: the registered champion when warm-starting and it fits, else the
    pretrained model; the second value says which, and why."""
    uri = paths.global_uri(0)
    state = initial_state(scenario, input_shape)
    check_patterns(scenario.federation.personal_layers, state)
    pretrained = ledger.hold(write_state(state, uri))
    if not scenario.retraining.warm_start:
        return pretrained, "pretrained model"
    try:  # a LoRA job starts from the champion's adapters, on the same pretrained encoder
        champion = tracker.champion_weights(adapter=scenario.model.lora is not None)
    except Exception as exc:  # registry or artifact store unreachable
        return pretrained, f"pretrained model ({exc})"
    if champion is None:
        return pretrained, "pretrained model (no champion registered yet)"
    version, path = champion
    name = f"{scenario.registered_model_name} v{version}"
    if not same_layout(path, pretrained):
        return pretrained, f"pretrained model (champion {name} does not fit this model)"
    return ledger.hold(copy_file(path, uri)), f"champion {name}"


def resumed(point: ResumePoint, paths: JobPaths, ledger: WeightLedger, aggregation) -> WeightRef:
    """The global model of an interrupted job's last completed round, with the strategy's state
    restored into `aggregation`."""
    current = ledger.hold(copy_file(point.weights_path, paths.global_uri(point.round_index)))
    if point.strategy_state_path:
        aggregation.load_state_dict(load_file(point.strategy_state_path))
    return current


def settle_data(scenario: Scenario, summaries: list[DataSummary]) -> tuple[Scenario, tuple[int, ...]]:
    """The scenario with `data.labels` fixed and the input shape all silos share.

    Every participant must agree on the model's output order, and in distributed mode no process
    sees every silo's data, so the coordinator settles it once from the label counts silos report
    (when the scenario does not name them). Screening has refused silos whose shapes differ.
    """
    seen = {label for s in summaries for label in (*s.train_counts, *s.test_counts)}
    labels = order_labels(scenario, seen)
    if scenario.data.labels != labels:
        raw = scenario.model_dump(mode="json")
        raw["data"]["labels"] = labels
        scenario = Scenario.model_validate(raw)
    shapes = {tuple(s.input_shape) for s in summaries}
    return scenario, (shapes.pop() if shapes else ())
