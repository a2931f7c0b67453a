"""No single silo decides: one attacker out of three, scripted (no training), against the engine.

Each test is an attack from issue "No single silo decides": the honest two must finish the job,
and nothing non-finite may be logged, registered or kept in strategy state.
"""

import math
from dataclasses import replace

import pytest
import torch

from fedsilo.engine import influence
from fedsilo.messages import DataSummary
from fedsilo.steps import Evaluate, Fit, Prepare
from fedsilo.transport import InProcess
from fedsilo.weights import read_state, write_state
from tests.engine import run
from tests.scripted import Scripted, moved_by

THREE = "silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]"
QUORUM = "federation.min_silos=2"
ONE_ROUND = "federation.rounds=1"
COUNTS = {"clinic-a": 30, "clinic-b": 30, "clinic-c": 30}
SHIFT = {"clinic-a": 0.01, "clinic-b": 0.02, "clinic-c": 0.015}
HONEST = (30 * 0.01 + 30 * 0.02) / 60  # FedAvg of clinic-a and clinic-b alone


def with_attacker(change, silo="clinic-c", shift=SHIFT, counts=COUNTS) -> InProcess:
    """Scripted silos where `change(scenario, step, reply)` rewrites `silo`'s replies."""
    script = Scripted(shift, counts)

    def handler(scenario, name, step):
        reply = script(scenario, name, step)
        return change(scenario, step, reply) if name == silo else reply

    return InProcess(handler)


def huge_update(scenario, step, reply):
    """Every value a finite 3e38: a float32 sum of two of them is infinite."""
    if not isinstance(step, Fit):
        return reply
    state = {
        k: torch.full_like(v, 3e38) if v.is_floating_point() else v
        for k, v in read_state(reply.update).items()
    }
    return replace(reply, update=write_state(state, reply.update.uri))


def all_finite(tracker) -> bool:
    models = [t for model in tracker.models.values() for t in model.values() if t.is_floating_point()]
    states = [t for extra in tracker.extra_tensors.values() for s in extra.values() for t in s.values()]
    metrics = [v for r in tracker.rounds.values() for v in r.values()]
    return all(bool(t.isfinite().all()) for t in models + states) and all(math.isfinite(v) for v in metrics)


def bound(tracker) -> float:
    """The most one silo may move the model: the norm factor times the median update's norm."""
    size = sum(t.numel() for t in tracker.models[0].values() if t.is_floating_point())
    return influence.NORM_FACTOR * 0.015 * math.sqrt(size)


def distance(a, b) -> float:
    return math.sqrt(
        sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in a if a[n].is_floating_point())
    )


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm", "fedadam"])
def test_a_finite_3e38_update_is_clipped_and_the_model_stays_within_the_bound(tmp_path, strategy):
    transport = with_attacker(huge_update)
    _, tracker = run(tmp_path, THREE, QUORUM, f"federation.strategy={strategy}", transport=transport)
    assert all_finite(tracker) and sorted(tracker.models) == [0, 1, 2]
    assert "clinic-c" in tracker.tags[None]["fedsilo.clipped.round_1"]
    if strategy == "fedavg":
        honest = {k: v + HONEST if v.is_floating_point() else v for k, v in tracker.models[0].items()}
        assert distance(tracker.models[1], honest) <= bound(tracker) / 3 * 1.0001  # its weight is 1/3


def test_with_two_silos_an_unsound_aggregate_keeps_the_previous_model(tmp_path):
    two = {"clinic-a": 0.01, "clinic-b": 0.02}
    transport = with_attacker(
        huge_update, silo="clinic-b", shift=two, counts={"clinic-a": 30, "clinic-b": 30}
    )
    result, tracker = run(tmp_path, "federation.strategy=fedavgm", transport=transport)
    assert result.rounds == 2 and all_finite(tracker)
    assert "not finite" in tracker.tags[None]["fedsilo.refused.round_1.aggregate"]
    assert distance(tracker.models[1], tracker.models[0]) == 0  # the previous global, kept


def test_a_claim_of_a_billion_examples_is_capped_by_the_others_counts(tmp_path):
    def claims_a_billion(scenario, step, reply):
        if isinstance(step, Prepare):
            label = scenario.data.labels[0] if scenario.data.labels else "x"
            return replace(reply, train_counts={**reply.train_counts, label: 10**9})
        return replace(reply, num_examples=10**9) if isinstance(step, Fit) else reply

    shift = {"clinic-a": 0.01, "clinic-b": 0.02, "clinic-c": 0.05}
    _, tracker = run(
        tmp_path, THREE, QUORUM, ONE_ROUND, transport=with_attacker(claims_a_billion, shift=shift)
    )
    cap = influence.WEIGHT_FACTOR * 30
    expected = (30 * 0.01 + 30 * 0.02 + cap * 0.05) / (60 + cap)  # not ~0.05: capped at 4 x 30
    assert moved_by(tracker.models[1], tracker.models[0]) == pytest.approx(expected, rel=1e-4)


def test_an_inflated_confusion_matrix_is_refused_and_cannot_decide_the_union(tmp_path):
    def claims_1e15_correct(scenario, step, reply):
        if isinstance(step, Evaluate):
            size = len(reply.confusion)
            return replace(
                reply, confusion=[[10**15 if i == j else 0 for j in range(size)] for i in range(size)]
            )
        return reply

    _, tracker = run(tmp_path, THREE, QUORUM, ONE_ROUND, transport=with_attacker(claims_1e15_correct))
    assert "reported" in tracker.tags["clinic-c"]["fedsilo.refused.round_1.evaluation"]
    assert tracker.rounds[1]["silos_evaluated"] == 2
    assert tracker.rounds[1]["global_accuracy_median"] == 1.0  # scripted evaluations are perfect


def test_integer_constants_stay_and_counters_only_grow():
    from fedsilo.errors import UpdateRefused
    from fedsilo.validation import Layout, check_update

    current = {"w": torch.zeros(2), "ids": torch.arange(4), "bn.num_batches_tracked": torch.tensor(5)}
    layout = Layout.of(current)
    assert check_update(current | {"bn.num_batches_tracked": torch.tensor(9)}, 3, current, layout) == 0
    with pytest.raises(UpdateRefused, match="'ids' differs"):  # the max over silos would keep it
        check_update(current | {"ids": torch.full((4,), 511)}, 3, current, layout)
    for counter in (4, 10**12):
        with pytest.raises(UpdateRefused, match="impossible step"):
            check_update(current | {"bn.num_batches_tracked": torch.tensor(counter)}, 3, current, layout)


def test_one_silo_reporting_another_image_shape_or_no_examples_is_refused_not_fatal(tmp_path):
    def odd_shape(scenario, step, reply):
        return replace(reply, input_shape=(3, 9, 9)) if isinstance(step, Prepare) else reply

    _, tracker = run(tmp_path, THREE, QUORUM, ONE_ROUND, transport=with_attacker(odd_shape))
    assert tracker.rounds[1]["silos_answered"] == 2

    def negative(scenario, step, reply):
        return DataSummary(reply.silo, {"x": -5}, reply.test_counts) if isinstance(step, Prepare) else reply

    _, tracker = run(tmp_path / "b", THREE, QUORUM, ONE_ROUND, transport=with_attacker(negative))
    assert tracker.rounds[1]["silos_answered"] == 2


def test_the_champion_verdict_is_each_silos_vote():
    from fedsilo.engine.champion import verdict
    from fedsilo.messages import Evaluation

    def scored(accuracies: dict[str, float], size: dict[str, int]) -> list[Evaluation]:
        return [
            Evaluation(s, a, a, 0.1, [[round(a * size[s]), 0], [0, size[s] - round(a * size[s])]])
            for s, a in accuracies.items()
        ]

    honest = {"a": 10, "b": 10, "c": 10**9}  # c claims a huge test set
    candidate = scored({"a": 0.9, "b": 0.9, "c": 0.0}, honest)
    champion = scored({"a": 0.1, "b": 0.1, "c": 1.0}, honest)
    promote, reason = verdict(candidate, champion, "accuracy", "1")
    assert promote and "one vote each" in reason


def test_absurd_counts_or_losses_are_refused_and_a_huge_test_split_does_not_decide_the_union(tmp_path):
    def claims(test_total, loss=0.1):
        def change(scenario, step, reply):
            labels = scenario.data.labels
            if isinstance(step, Prepare):
                return replace(reply, test_counts={labels[0]: test_total})
            if isinstance(step, Evaluate):  # all wrong, and as many as it claimed
                size = len(labels)
                confusion = [
                    [test_total if (i, j) == (0, 1) else 0 for j in range(size)] for i in range(size)
                ]
                return replace(reply, confusion=confusion, loss=loss)
            return reply

        return with_attacker(change)

    for total, loss in ((10**400, 0.1), (10, 1.7e308)):  # refused at prepare / at every evaluation
        _, tracker = run(tmp_path / str(loss), THREE, QUORUM, ONE_ROUND, transport=claims(total, loss))
        assert tracker.rounds[1]["global_accuracy"] == 1.0 and all_finite(tracker)
    _, tracker = run(tmp_path / "split", THREE, QUORUM, ONE_ROUND, transport=claims(10**15))
    assert tracker.rounds[1]["global_accuracy"] == pytest.approx(2 / 3)  # capped at the others' 10
    assert tracker.rounds[1]["global_accuracy_median"] == 1.0


def test_a_round_with_one_silo_absent_keeps_the_last_bound(tmp_path):
    def absent_then_push(scenario, step, reply):
        if isinstance(step, Fit) and step.round_index == 2:
            state = {k: v + 1000 if v.is_floating_point() else v for k, v in read_state(step.weights).items()}
            return replace(reply, update=write_state(state, reply.update.uri))
        return reply

    script = Scripted(SHIFT, COUNTS)

    def handler(scenario, silo, step):
        if silo == "clinic-a" and isinstance(step, Fit) and step.round_index == 2:
            raise TimeoutError("clinic-a is down this round")
        reply = script(scenario, silo, step)
        return absent_then_push(scenario, step, reply) if silo == "clinic-c" else reply

    _, tracker = run(tmp_path, THREE, QUORUM, transport=InProcess(handler))
    assert "clinic-c" in tracker.tags[None]["fedsilo.clipped.round_2"]  # round 1's bound, kept
    assert distance(tracker.models[2], tracker.models[1]) <= bound(tracker)
    # the bound is part of the strategy state logged with each round, so a resumed job keeps it
    state = tracker.extra_tensors[1]["strategy_state.safetensors"]
    assert float(state["fedsilo/norm_bound"]) == pytest.approx(bound(tracker))


def test_under_secure_aggregation_an_unclipped_update_cannot_move_the_model_past_the_bound(tmp_path):
    """Nothing set: each silo clips to 3x the median of the norms reported at fit. A silo that
    lies about its norm and skips clipping either has its sum refused or moves the mean change by
    at most that bound; it never takes the model to where 1000.0 would."""
    from unittest import mock

    from fedsilo.privacy import secagg_silo
    from fedsilo.privacy.secagg_steps import Mask

    shift = {"clinic-a": 0.01, "clinic-b": 0.02, "clinic-c": 1000.0}
    script = Scripted(shift, COUNTS)

    def handler(scenario, name, step):
        if name != "clinic-c":
            return script(scenario, name, step)
        if isinstance(step, Mask):  # its own code: no clipping before it encodes
            with mock.patch.object(secagg_silo.secagg, "clip_norm", lambda delta, bound: delta):
                return script(scenario, name, step)
        reply = script(scenario, name, step)
        return replace(reply, update_norm=1e-3) if isinstance(step, Fit) else reply  # it lies

    _, tracker = run(
        tmp_path, THREE, QUORUM, ONE_ROUND, "privacy.secure_aggregation=true", transport=InProcess(handler)
    )
    assert all_finite(tracker)
    size = sum(t.numel() for t in tracker.models[0].values() if t.is_floating_point())
    stated = influence.NORM_FACTOR * 0.01 * math.sqrt(size)  # 3 x the median reported norm
    moved = distance(tracker.models[1], tracker.models[0])
    refused = tracker.tags[None].get("fedsilo.refused.round_1.aggregate", "")
    assert moved <= stated * 1.001 and (moved == 0) == bool(refused)
    assert "clinic-c" not in tracker.tags[None].get("fedsilo.clipped.round_1", "")  # it lied


def test_under_secure_aggregation_honest_silos_clip_to_three_medians_and_are_named(tmp_path):
    shift = {"clinic-a": 0.01, "clinic-b": 0.02, "clinic-c": 0.5}  # clinic-c: 25x the median
    transport = InProcess(Scripted(shift, COUNTS))
    secure = "privacy.secure_aggregation=true"
    _, tracker = run(tmp_path, THREE, QUORUM, ONE_ROUND, secure, transport=transport)
    size = sum(t.numel() for t in tracker.models[0].values() if t.is_floating_point())
    clipped_c = influence.NORM_FACTOR * 0.02 * math.sqrt(size)  # its change, clipped to the bound
    honest = math.sqrt(size) * (0.01 + 0.02)
    expected = (honest + clipped_c) / 3  # every change points the same way; equal weights
    assert distance(tracker.models[1], tracker.models[0]) == pytest.approx(expected, rel=1e-4)
    assert "clinic-c" in tracker.tags[None]["fedsilo.clipped.round_1"]


def test_a_claimed_huge_test_split_does_not_decide_the_kept_or_alone_union():
    from types import SimpleNamespace

    from fedsilo.engine import keeping
    from fedsilo.engine.protocols import NullTracker
    from fedsilo.engine.recording import RoundRecorder
    from fedsilo.messages import Evaluation, Kept
    from fedsilo.scenario import load_scenario
    from tests.conftest import REPO

    def evaluation(silo, right, wrong):
        return Evaluation(silo, 0.0, 0.0, 0.1, [[right, wrong], [0, 0]])

    honest = [
        Kept(s, "global", {}, evaluation(s, 5, 5), evaluation(s, 5, 5)) for s in ("clinic-a", "clinic-b")
    ]
    liar = Kept("clinic-c", "global", {}, evaluation("clinic-c", 10**6, 0), evaluation("clinic-c", 10**6, 0))
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", ["federation.rounds=1"])
    tracker = NullTracker()
    cap = influence.weight_cap([10, 10, 10**6], influence.TEST_FACTOR)  # from the counts at prepare
    job = SimpleNamespace(
        tracker=tracker, scenario=scenario, recorder=RoundRecorder(scenario, tracker, (), {}, cap)
    )
    keeping.record(job, [*honest, liar])
    assert tracker.rounds[1]["kept_accuracy"] == pytest.approx(20 / 30)  # its split weighs as 10, not 10^6
    assert tracker.rounds[1]["alone_accuracy"] == pytest.approx(20 / 30)
