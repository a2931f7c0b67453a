"""Secure aggregation: the coordinator sees masked vectors only, and still gets FedAvg's model."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedsilo.errors import FederationError
from fedsilo.privacy import secagg
from fedsilo.privacy.secure_aggregation import Mask
from fedsilo.scenario import ScenarioError, load_scenario
from fedsilo.silo_steps import handle
from fedsilo.steps import Fit
from fedsilo.transport import Answers, InProcess
from fedsilo.weights import read_state, write_state
from tests.conftest import REPO
from tests.engine import run

THREE_SILOS = "silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]"
QUORUM_OF_TWO = "federation.min_silos=2"
SECURE = "privacy.secure_aggregation=true"


@pytest.fixture(autouse=True)
def silo_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "silo-state"))


class Capturing(InProcess):
    """In-process silos that keep a copy of every update and masked vector the coordinator gets,
    and can drop one silo from a round's first masking attempt (killed after masking)."""

    def __init__(self, drop=None):
        super().__init__()
        self.updates, self.masked, self.fit_replies, self.drop = {}, {}, {}, drop
        self.attempts = []

    def ask(self, scenario, step, silos):
        replies, absent = super().ask(scenario, step, silos)
        if isinstance(step, Fit):
            return self._fitted(scenario, step.round_index, replies, absent)
        if isinstance(step, Mask):
            return self._masked(step, self.tweak(step, replies), absent)
        return Answers(replies, absent)

    def _fitted(self, scenario, round_index, replies, absent):
        self.fit_replies[round_index] = list(replies.values())
        for silo, report in replies.items():
            if report.update is not None:
                self.updates[(round_index, silo)] = read_state(report.update)
        if self.drop and self.drop[0] == round_index and not scenario.privacy.secure_aggregation:
            replies.pop(self.drop[1], None)
            return Answers(replies, [*absent, self.drop[1]])
        return Answers(replies, absent)

    def _masked(self, step, replies, absent):
        self.attempts.append((step.round_index, step.attempt, sorted(step.peers)))
        for silo, reply in replies.items():
            self.masked[(step.round_index, step.attempt, silo)] = read_state(reply.vector)["masked"]
        if self.drop and (step.round_index, step.attempt) == (self.drop[0], 0):
            replies.pop(self.drop[1], None)
            return Answers(replies, [*absent, self.drop[1]])
        return Answers(replies, absent)

    def tweak(self, step, replies):
        """What a dishonest silo changes in its masked reply (nothing here)."""
        return replies


def _max_difference(a, b) -> float:
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a if a[n].is_floating_point())


def _job(tmp_path, *overrides, drop=None):
    silos = Capturing(drop)
    result, tracker = run(tmp_path, *overrides, transport=silos)
    return silos, tracker


def test_the_coordinator_receives_no_update_of_a_silo_and_still_gets_fedavg(tmp_path):
    plain, plain_tracker = _job(tmp_path / "plain")
    secure, secure_tracker = _job(tmp_path / "secure", SECURE)

    assert not secure.updates  # no fit reply referenced an update
    assert all(r.update is None and r.public_key for r in secure.fit_replies[1])
    true_update = plain.updates[(1, "clinic-a")]
    start = plain_tracker.models[0]
    names = secagg.float_names(start)
    true_delta = torch.cat([(true_update[n].double() - start[n].double()).flatten() for n in names])
    received = secure.masked[(1, 0, "clinic-a")].numpy().view(np.uint32)[:-1].astype(np.float64)
    assert received.shape == true_delta.shape
    assert np.corrcoef(received, true_delta.numpy())[0, 1] == pytest.approx(0, abs=0.02)
    assert not np.allclose(received / secagg.Encoding(1.0, 60).scale, true_delta.numpy(), atol=1e-3)
    # ... yet the global model is FedAvg's to within fixed point and FedAvg's own float32 rounding
    bound = secagg.rounding_bound(2, secagg.Encoding(1.0, 60), 60) + 1e-6
    assert _max_difference(secure_tracker.models[1], plain_tracker.models[1]) <= bound
    assert secure_tracker.rounds[2]["global_loss"] == pytest.approx(
        plain_tracker.rounds[2]["global_loss"], abs=1e-5
    )
    # local models never left the silos, so the silo x silo matrix has no local rows
    assert list(secure_tracker.matrix.index) == ["global"]
    assert (
        secure_tracker.silos["clinic-a"]["clipped_coordinates"][1] == 0
    )  # 1.0 is far above a round's change
    assert not list((tmp_path / "secure" / "jobs").rglob("*.safetensors"))


def test_a_silo_lost_after_masking_leaves_fedavg_over_the_silos_that_answered(tmp_path):
    dropped = (1, "clinic-b")
    plain, plain_tracker = _job(tmp_path / "plain", THREE_SILOS, QUORUM_OF_TWO, drop=dropped)
    secure, secure_tracker = _job(tmp_path / "secure", THREE_SILOS, QUORUM_OF_TWO, SECURE, drop=dropped)

    assert secure.attempts[:2] == [
        (1, 0, ["clinic-a", "clinic-b", "clinic-c"]),
        (1, 1, ["clinic-a", "clinic-c"]),
    ]
    assert (1, 1, "clinic-b") not in secure.masked
    bound = secagg.rounding_bound(2, secagg.Encoding(1.0, 90), 60) + 1e-6
    assert _max_difference(secure_tracker.models[1], plain_tracker.models[1]) <= bound
    assert secure_tracker.rounds[1]["silos_answered"] == 2
    assert secure_tracker.silos["clinic-b"]["answered"] == {1: 0.0, 2: 1.0}
    # the two attempts' vectors of one silo differ: fresh masks, nothing to subtract
    first, second = secure.masked[(1, 0, "clinic-a")], secure.masked[(1, 1, "clinic-a")]
    assert float((first != second).double().mean()) > 0.99


def test_a_sum_no_honest_silos_could_send_is_refused_and_named(tmp_path):
    class Forging(Capturing):
        def tweak(self, step, replies):
            forged = replies["clinic-a"]
            noise = torch.randint(-(2**31), 2**31 - 1, (read_state(forged.vector)["masked"].numel(),))
            vector = write_state({"masked": noise.int()}, forged.vector.uri)
            return replies | {"clinic-a": replace(forged, vector=vector)}

    with pytest.raises(FederationError, match="secure sum of clinic-a, clinic-b was refused"):
        run(tmp_path, SECURE, transport=Forging())


def test_a_malformed_masked_update_is_left_out_and_the_others_mask_again(tmp_path):
    class Truncating(Capturing):
        def tweak(self, step, replies):
            reply = replies.get("clinic-c")
            if reply is None or step.round_index != 1:
                return replies
            short = write_state({"masked": torch.zeros(10, dtype=torch.int32)}, reply.vector.uri)
            return replies | {"clinic-c": replace(reply, vector=short)}

    silos = Truncating()
    _, tracker = run(tmp_path, THREE_SILOS, QUORUM_OF_TWO, SECURE, transport=silos)
    assert silos.attempts[:2] == [
        (1, 0, ["clinic-a", "clinic-b", "clinic-c"]),
        (1, 1, ["clinic-a", "clinic-b"]),
    ]
    assert tracker.rounds[1]["silos_answered"] == 2
    assert tracker.silos["clinic-c"]["answered"] == {1: 0.0, 2: 1.0}


def test_masks_cancel_exactly_and_need_every_silo():
    keys = {name: secagg.new_private_key() for name in ("a", "b", "c")}
    public = {name: secagg.public_key(key) for name, key in keys.items()}
    masks = [secagg.pair_masks(keys[n], n, public, b"round 1", 1000) for n in public]
    assert not np.any(masks[0] + masks[1] + masks[2])  # uint32: exactly 0 modulo 2^32
    assert np.any(masks[0] + masks[1])
    with pytest.raises(secagg.SecAggError, match="unusable public key"):
        secagg.pair_masks(keys["a"], "a", {"b": "00" * 31}, b"round 1", 10)


def test_strategies_that_need_single_updates_are_refused_with_secure_aggregation():
    path = REPO / "scenarios" / "smoke.yaml"
    with pytest.raises(ScenarioError) as error:
        load_scenario(path, [SECURE, "federation.strategy=median"])
    assert "privacy.secure_aggregation" in str(error.value) and "federation.strategy" in str(error.value)
    with pytest.raises(ScenarioError, match="federation.min_silos"):
        load_scenario(path, [SECURE, "federation.min_silos=1"])


def bad_replies(scenario, silo, step):
    """clinic-c's fit reply is broken the way the round's mode makes worst: under secure
    aggregation an unusable public key (which would fail every other silo's masking), otherwise
    no update at all."""
    reply = handle(scenario, silo, step)
    if silo != "clinic-c" or not isinstance(step, Fit):
        return reply
    broken = {"public_key": "00" * 32} if scenario.privacy.secure_aggregation else {"update": None}
    return replace(reply, **broken)


@pytest.mark.parametrize("mode", [(), (SECURE,)])
def test_a_fit_reply_that_does_not_fit_the_round_is_left_out_by_name(tmp_path, mode):
    transport = InProcess(bad_replies)
    _, tracker = run(tmp_path, THREE_SILOS, QUORUM_OF_TWO, *mode, "federation.rounds=1", transport=transport)
    assert tracker.rounds[1]["silos_answered"] == 2
    assert tracker.silos["clinic-c"]["answered"] == {1: 0.0}


def test_encoding_clips_to_the_range_and_counts_what_it_clipped():
    current = {"w": torch.zeros(4), "steps": torch.tensor([1])}
    local = {"w": torch.tensor([0.5, -3.0, 2.0, 0.0]), "steps": torch.tensor([2])}
    encoding = secagg.Encoding(clipping_range=1.0, weight_bound=10)
    vector, clipped = secagg.encode(local, current, 4, encoding)
    assert clipped == 2 and vector[-1] == 4  # the weight travels last, exactly
    sums, total = secagg.decode_sum(secagg.unmask_sum([vector]), current, encoding, max_weight=10)
    assert total == 4 and torch.allclose(sums["w"] / 4, torch.tensor([0.5, -1.0, 1.0, 0.0]).double())
