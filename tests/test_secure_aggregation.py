"""Secure aggregation: the coordinator sees masked vectors only, and still gets FedAvg's model."""

import itertools
import json
from dataclasses import replace

import fsspec
import numpy as np
import pytest
import torch
from safetensors.torch import load as safetensors_load

from fedsilo.errors import FederationError
from fedsilo.messages import RevealedShares, SharedKeys, WeightRef, dump_reply, load_reply
from fedsilo.paths import JobPaths
from fedsilo.privacy import pending, secagg, secagg_recovery
from fedsilo.privacy import secagg_shares as shares
from fedsilo.privacy.secagg import Encoding
from fedsilo.privacy.secagg_shares import View
from fedsilo.privacy.secagg_steps import Mask, ShareKeys, Unmask
from fedsilo.scenario import ScenarioError, load_scenario
from fedsilo.silo_steps import handle
from fedsilo.steps import Fit, Prepare, dump_step, load_step
from fedsilo.transport import Answers, InProcess
from fedsilo.weights import read_state, write_state
from tests.conftest import REPO
from tests.engine import run
from tests.scripted import Scripted, moved_by

THREE_SILOS = "silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]"
QUORUM_OF_TWO = "federation.min_silos=2"
SECURE = "privacy.secure_aggregation=true"


@pytest.fixture(autouse=True)
def silo_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "silo-state"))


class Capturing(InProcess):
    """In-process silos that keep a copy of every update and masked vector the coordinator gets,
    and can drop one silo from a round's masking step (killed after masking)."""

    def __init__(self, drop=None):
        super().__init__()
        self.updates, self.masked, self.fit_replies, self.drop = {}, {}, {}, drop
        self.attempts = []

    def ask(self, scenario, step, silos):
        replies, absent = super().ask(scenario, step, silos)[:2]
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
        self.attempts.append((step.round_index, sorted(step.bundles)))
        for silo, reply in replies.items():
            self.masked[(step.round_index, 0, silo)] = read_state(reply.vector)["masked"]
        if self.drop and step.round_index == self.drop[0]:
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
    assert list(secure_tracker.matrix.index) == ["global", "alone"]
    assert (
        secure_tracker.silos["clinic-a"]["clipped_coordinates"][1] == 0
    )  # 1.0 is far above a round's change
    assert not list((tmp_path / "secure" / "jobs").rglob("*.safetensors"))


def test_a_silo_lost_after_masking_leaves_fedavg_over_the_silos_that_answered(tmp_path):
    dropped = (1, "clinic-b")
    plain, plain_tracker = _job(tmp_path / "plain", THREE_SILOS, QUORUM_OF_TWO, drop=dropped)
    secure, secure_tracker = _job(tmp_path / "secure", THREE_SILOS, QUORUM_OF_TWO, SECURE, drop=dropped)

    # every silo masked once; clinic-b's masks were removed with the survivors' shares
    assert [attempt for attempt in secure.attempts if attempt[0] == 1] == [
        (1, ["clinic-a", "clinic-b", "clinic-c"])
    ]
    bound = secagg.rounding_bound(2, secagg.Encoding(1.0, 90), 60) + 1e-6
    assert _max_difference(secure_tracker.models[1], plain_tracker.models[1]) <= bound
    assert secure_tracker.rounds[1]["silos_answered"] == 2
    assert secure_tracker.silos["clinic-b"]["answered"] == {1: 0.0, 2: 1.0}


def test_a_sum_no_honest_silos_could_send_keeps_the_previous_model_and_the_job_goes_on(tmp_path):
    """One silo can break a masked sum and no one can tell whose vector did: the round keeps the
    previous global model, named, instead of failing the job for the others."""

    class Forging(Capturing):
        def tweak(self, step, replies):
            forged = replies["clinic-a"]
            noise = torch.randint(-(2**31), 2**31 - 1, (read_state(forged.vector)["masked"].numel(),))
            vector = write_state({"masked": noise.int()}, forged.vector.uri)
            return replies | {"clinic-a": replace(forged, vector=vector)}

    result, tracker = run(tmp_path, SECURE, transport=Forging())
    assert result.rounds == 2
    refused = tracker.tags[None]["fedsilo.refused.round_1.aggregate"]
    assert "secure sum of clinic-a, clinic-b was refused" in refused
    assert _max_difference(tracker.models[1], tracker.models[0]) == 0  # the previous model, kept


def test_a_malformed_masked_update_is_left_out_and_recovered_as_a_dropout(tmp_path):
    class Truncating(Capturing):
        def tweak(self, step, replies):
            reply = replies.get("clinic-c")
            if reply is None or step.round_index != 1:
                return replies
            short = write_state({"masked": torch.zeros(10, dtype=torch.int32)}, reply.vector.uri)
            return replies | {"clinic-c": replace(reply, vector=short)}

    silos = Truncating()
    _, tracker = run(tmp_path, THREE_SILOS, QUORUM_OF_TWO, SECURE, transport=silos)
    assert [attempt for attempt in silos.attempts if attempt[0] == 1] == [
        (1, ["clinic-a", "clinic-b", "clinic-c"])
    ]  # clinic-c counts as dropped: the others' shares remove its masks, nobody masks again
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
    values = secagg.signed(secagg.unmask_sum([vector]))
    secagg.check_sum(values, encoding, 4)
    sums = secagg.decode_sum(values, current, encoding)
    assert torch.allclose(sums["w"] / 4, torch.tensor([0.5, -1.0, 1.0, 0.0]).double())


# -- double masking, from scripted silos (no training) ---------------------------------------------

COUNTS = {"clinic-a": 10, "clinic-b": 30, "clinic-c": 60}
SHIFT = {"clinic-a": 0.01, "clinic-b": 0.02, "clinic-c": -0.03}
SCRIPTED = [THREE_SILOS, QUORUM_OF_TWO, SECURE, "federation.rounds=1", "evaluation.test_fraction=0.25"]


def _merged(*answers: Answers) -> Answers:
    return Answers(
        {k: v for a in answers for k, v in a.replies.items()}, [s for a in answers for s in a.absent]
    )


def _read_file(uri: str) -> np.ndarray | None:
    """A masked vector written at `uri`, read straight from the store (None when there is none)."""
    try:
        with fsspec.open(uri, "rb") as handle:
            return safetensors_load(handle.read())["masked"].numpy().view(np.uint32)
    except FileNotFoundError:
        return None


class Watching(InProcess):
    """Scripted silos behind a coordinator that keeps a copy of all it sees: the fit replies, the
    share step (its view), the sealed bundles, every masked vector written (also the late one of a
    silo it declared dropped), and the revealed shares."""

    def __init__(self, script):
        super().__init__(script)
        self.fits, self.shared, self.revealed, self.vectors, self.steps = {}, {}, {}, {}, {}

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        self.steps[type(step).__name__] = step
        if isinstance(step, Fit):
            self.fits = dict(answers.replies)
        elif isinstance(step, ShareKeys):
            self.shared = dict(answers.replies)
        elif isinstance(step, Mask):
            for silo in silos:  # everything written, answered or not
                vector = _read_file(JobPaths(step.exchange).masked_uri(step.round_index, 0, silo))
                if vector is not None:
                    self.vectors[silo] = vector
        elif isinstance(step, Unmask):
            self.revealed = dict(answers.replies)
        return answers

    def view(self) -> View:
        share = self.steps["ShareKeys"]
        return View(
            share.round_index, share.exchange, share.peers, Encoding.of(share.encoding), share.threshold
        )


def _updates(view: View, start) -> dict[str, np.ndarray]:
    """Each silo's encoded update, exactly as it was before masking: what must stay hidden."""
    local = {s: {k: v + SHIFT[s] if v.is_floating_point() else v for k, v in start.items()} for s in COUNTS}
    return {s: secagg.encode(local[s], start, COUNTS[s], view.encoding)[0] for s in COUNTS}


def _reveals(candidate: np.ndarray, update: np.ndarray) -> bool:
    return float(np.mean(candidate == update)) > 0.01


def _attempts(watching: Watching, view: View, seeds: dict, keys: dict) -> dict[str, np.ndarray]:
    """Every combination of what the coordinator saw that could undo masks: single vectors, less
    every mask it can rebuild; their differences; the two-attempt subtraction (all vectors, the
    late one included, minus the survivors' unmasked sum)."""
    y, context = watching.vectors, view.digest.encode()
    length, survivors = len(next(iter(y.values()))), sorted(seeds)
    tries = {f"y[{s}]": v for s, v in y.items()}
    for silo, vector in y.items():
        rest = vector - secagg.self_mask(seeds[silo], context, length) if silo in seeds else vector.copy()
        if silo in keys:  # a dropped silo: every pairwise mask of its own
            peers = {p: view.mask_key(p) for p in view.peers}
            rest -= secagg.pair_masks(keys[silo], silo, peers, context, length)
        for dropped, key in keys.items():  # a survivor: its pairwise masks with a dropped silo
            if dropped != silo:
                rest += secagg.pair_masks(key, dropped, {silo: view.mask_key(silo)}, context, length)
        tries[f"y[{silo}] less every mask the coordinator can rebuild"] = rest
    for a, b in itertools.permutations(y, 2):
        tries[f"y[{a}] - y[{b}]"] = y[a] - y[b]
    the_sum = secagg_recovery.unmasked([y[s] for s in survivors], view, seeds, keys, survivors)
    everything = secagg.unmask_sum(list(y.values()))
    for silo in survivors:
        everything -= secagg.self_mask(seeds[silo], context, length)
    tries["all vectors less the survivors' self masks, less their sum"] = everything - the_sum
    return tries | {"the survivors' sum": the_sum}


def test_the_coordinators_view_across_a_dropout_yields_no_single_silos_update(tmp_path):
    watching = Watching(Scripted(SHIFT, COUNTS, drop_mask={"clinic-b"}))
    _, tracker = run(tmp_path, *SCRIPTED, transport=watching)
    view, survivors = watching.view(), ["clinic-a", "clinic-c"]
    assert sorted(watching.vectors) == sorted(COUNTS)  # clinic-b's vector was written, late
    assert all(
        set(r.seeds) == set(survivors) and set(r.mask_keys) == {"clinic-b"}
        for r in watching.revealed.values()
    )
    seeds, keys = secagg_recovery.rebuild(view, watching.shared, watching.revealed, survivors)
    updates = _updates(view, tracker.models[0])
    tries = _attempts(watching, view, seeds, keys)
    # the detector works: the coordinator does learn the survivors' sum, exactly
    assert not np.any(tries.pop("the survivors' sum") - (updates["clinic-a"] + updates["clinic-c"]))
    leaks = [(name, silo) for name, t in tries.items() for silo, x in updates.items() if _reveals(t, x)]
    assert not leaks
    # ... and would see clinic-b's update with the one secret no silo reveals: its own seed
    own_seed = pending.load("clinic-b", JobPaths(view.job).update_uri(1, "clinic-b")).secrets["seed"]
    with_seed = _attempts(watching, view, seeds | {"clinic-b": own_seed}, keys)
    assert _reveals(with_seed["y[clinic-b] less every mask the coordinator can rebuild"], updates["clinic-b"])
    # ... and the round is FedAvg of the survivors, to within fixed point
    expected = sum(COUNTS[s] * SHIFT[s] for s in survivors) / sum(COUNTS[s] for s in survivors)
    bound = secagg.rounding_bound(2, view.encoding, 70) + 1e-6
    assert moved_by(tracker.models[1], tracker.models[0]) == pytest.approx(expected, abs=bound)
    assert "dropped out of the masking step" in tracker.tags["clinic-b"]["fedsilo.refused.round_1"]


def test_fewer_survivors_than_the_threshold_refuse_the_round_and_say_why(tmp_path):
    script = Scripted(SHIFT, COUNTS, drop_mask={"clinic-c"})
    with pytest.raises(FederationError, match="fewer than the threshold 3") as error:
        run(tmp_path, *SCRIPTED, "privacy.secagg_threshold=3", transport=InProcess(script))
    assert "clinic-c (dropped out of the masking step" in str(error.value)
    assert not [label for _, label in script.asked if label.startswith("unmask")]


class Lying(InProcess):
    """A coordinator that sends clinic-c a weight bound twice the others', consistently at fit,
    share and mask (`at_fit=False`: at the share step only, unlike what its fit got)."""

    def __init__(self, script, at_fit: bool = True):
        super().__init__(script)
        self.at_fit, self.digest = at_fit, ""

    def ask(self, scenario, step, silos):
        if isinstance(step, Fit) and self.at_fit:
            bound = 2 * step.config["secagg_weight_bound"]
            lie = replace(step, config=step.config | {"secagg_weight_bound": bound})
        elif isinstance(step, ShareKeys):
            lie = replace(step, encoding=step.encoding | {"weight_bound": 2 * step.encoding["weight_bound"]})
            encoding = Encoding.of(lie.encoding)
            self.digest = View(step.round_index, step.exchange, step.peers, encoding, step.threshold).digest
        elif isinstance(step, Mask) and self.at_fit:
            lie = replace(step, digest=self.digest)
        else:
            return super().ask(scenario, step, silos)
        others = [s for s in silos if s != "clinic-c"]
        return _merged(super().ask(scenario, step, others), super().ask(scenario, lie, ["clinic-c"]))


def test_one_silo_given_other_encoding_parameters_is_detected_and_the_round_refused(tmp_path, caplog):
    with pytest.raises(FederationError, match="dropped out of the masking step"):
        run(tmp_path, *SCRIPTED, transport=Lying(Scripted(SHIFT, COUNTS)))
    assert "clinic-a: will not mask: the shares of clinic-c do not open under its view" in caplog.text
    assert "clinic-c: will not mask: the shares of clinic-a, clinic-b do not open" in caplog.text
    assert "0 silos masked their updates, fewer than the threshold 2" in caplog.text


def test_a_silo_checks_the_encoding_of_the_share_step_against_its_fit(tmp_path):
    _, tracker = run(tmp_path, *SCRIPTED, transport=Lying(Scripted(SHIFT, COUNTS), at_fit=False))
    assert "dropped out of the sharing step" in tracker.tags["clinic-c"]["fedsilo.refused.round_1"]
    expected = (10 * 0.01 + 30 * 0.02) / 40
    assert moved_by(tracker.models[1], tracker.models[0]) == pytest.approx(expected, abs=1e-6)


class Greedy(InProcess):
    """A coordinator that also asks clinic-a for both kinds of share of one peer: in one step,
    then in a second step with another split of the same round."""

    def __init__(self, script):
        super().__init__(script)
        self.answers: list[str] = []

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        if isinstance(step, Unmask):
            both = replace(step, dropped=[*step.dropped, "clinic-c"])
            other = replace(step, survivors=["clinic-a", "clinic-b"], dropped=["clinic-c"])
            for greedy in (both, other):
                try:
                    self.answers.append(f"answered {handle(scenario, 'clinic-a', greedy)}")
                except secagg.SecAggError as exc:
                    self.answers.append(str(exc))
        return answers


def test_a_silo_asked_for_both_shares_of_one_peer_refuses(tmp_path):
    greedy = Greedy(Scripted(SHIFT, COUNTS))
    run(tmp_path, *SCRIPTED, transport=greedy)
    assert len(greedy.answers) == 2
    assert "asked for both shares of clinic-c" in greedy.answers[0]
    assert "revealed shares for another split of this round" in greedy.answers[1]


def test_a_wrong_share_from_one_silo_does_not_stop_the_others(tmp_path):
    class Misleading(InProcess):
        def ask(self, scenario, step, silos):
            answers = super().ask(scenario, step, silos)
            if isinstance(step, Unmask):  # clinic-a lies about its share of clinic-b's seed
                reply = answers.replies["clinic-a"]
                wrong = reply.seeds | {"clinic-b": bytes(16).hex()}
                answers.replies["clinic-a"] = replace(reply, seeds=wrong)
            return answers

    _, tracker = run(tmp_path, *SCRIPTED, transport=Misleading(Scripted(SHIFT, COUNTS)))
    expected = sum(COUNTS[s] * SHIFT[s] for s in COUNTS) / sum(COUNTS.values())
    assert moved_by(tracker.models[1], tracker.models[0]) == pytest.approx(expected, abs=1e-6)


def test_the_steps_and_replies_cross_as_json_and_keep_the_view():
    encoding = Encoding(0.5, 90, 2.0, 40)
    peers = {"a": "11" * 64, "b": "22" * 64}
    share = ShareKeys(3, peers, encoding.as_dict(), 2, "memory://x")
    ref = WeightRef("memory://x/round-003/shares/a.safetensors", "ab" * 32, 10)
    steps = [
        share,
        Mask(3, "d" * 64, {"a": ref}, "memory://x"),
        Unmask(3, "d" * 64, ["a"], ["b"], "memory://x"),
    ]
    for step in steps:
        assert load_step(json.loads(json.dumps(dump_step(step)))) == step
    back = load_step(json.loads(json.dumps(dump_step(share))))
    views = [View(3, "memory://x", s.peers, Encoding.of(s.encoding), s.threshold) for s in (share, back)]
    assert views[0].digest == views[1].digest
    for reply in (
        SharedKeys("a", 3, ref, "e" * 64),
        RevealedShares("a", 3, {"a": "00" * 16}, {"b": "00" * 32}),
    ):
        assert load_reply(type(reply), dump_reply(reply)) == reply


def test_a_fit_from_a_silo_that_did_not_describe_its_data_is_refused(tmp_path):
    class Unprepared(Scripted):
        def __call__(self, scenario, silo, step):
            if silo == "clinic-c" and isinstance(step, Prepare):
                raise TimeoutError("clinic-c missed prepare")
            return super().__call__(scenario, silo, step)

    script = Unprepared(SHIFT, COUNTS)
    _, tracker = run(tmp_path, *SCRIPTED, transport=InProcess(script))
    assert "did not describe its data at prepare" in tracker.tags["clinic-c"]["fedsilo.refused.round_1"]
    assert ("clinic-c", "share-round-1") not in script.asked


# -- the maths -------------------------------------------------------------------------------------


def test_a_thousand_random_honest_sums_at_the_clipping_bound_are_never_refused():
    """Each silo as `keep_update` does it: a float32 model's change, L2-clipped (half the time),
    then every coordinate at or past the clipping range; the sum is checked and decoded."""
    rng = np.random.default_rng(21)
    current, at_limit = {"w": torch.from_numpy(rng.normal(0, 1, 64)).float()}, 0
    for _ in range(1000):
        silos = int(rng.integers(2, 11))
        weights = [int(w) for w in rng.integers(1, 5000, silos)]
        clipping = float(10 ** rng.uniform(-4, 1))
        norm = float(clipping * rng.uniform(0.5, 8)) if rng.random() < 0.5 else 0.0
        encoding = secagg.Encoding(clipping, sum(weights) + int(rng.integers(0, 3)), norm)
        vectors, deltas = [], []
        for weight in weights:
            change = rng.choice([-1.0, 1.0], 64) * clipping * rng.choice([1.0, 1.0, 1.5], 64)
            local = {"w": current["w"] + torch.from_numpy(change).float()}
            delta = secagg.flat_change(local, current)
            delta = secagg.clip_norm(delta, norm) if norm else delta
            vectors.append(secagg.encode_change(delta, weight, encoding)[0])
            deltas.append(delta.clamp(-clipping, clipping) * weight)
        values = secagg.signed(secagg.unmask_sum(vectors))
        secagg.check_sum(values, encoding, sum(weights))  # raises on a refusal
        at_limit += int(np.abs(values[:-1].astype(np.int64)).max() == encoding.unit * sum(weights))
        sums = secagg.decode_sum(values, current, encoding)
        secagg.check_norm(sums, encoding, sum(weights), silos)
        error = float((sums["w"] - sum(deltas)).abs().max()) / sum(weights)
        assert error <= secagg.rounding_bound(silos, encoding, sum(weights)) * (1 + 1e-9)
    assert at_limit > 200  # many sums reach the integer bound exactly, and pass


def test_a_sum_one_silo_pushed_past_the_range_or_weight_is_refused():
    current = {"w": torch.zeros(4)}
    encoding = secagg.Encoding(1.0, 20)
    honest, _ = secagg.encode({"w": torch.ones(4)}, current, 10, encoding)
    forged = honest.copy()
    forged[0] += 1  # one step past the range, hidden under a mask
    with pytest.raises(secagg.SecAggError, match="clipping range"):
        secagg.check_sum(secagg.signed(secagg.unmask_sum([honest, forged])), encoding, 20)
    heavier = honest.copy()
    heavier[-1] += 1  # a weight one more than it reported
    with pytest.raises(secagg.SecAggError, match="total weight"):
        secagg.check_sum(secagg.signed(secagg.unmask_sum([honest, heavier])), encoding, 20)


def test_masks_under_two_views_do_not_cancel_and_the_sum_is_refused():
    keys = {name: secagg.new_private_key() for name in ("a", "b")}
    public = {name: secagg.public_key(key) for name, key in keys.items()}
    current = {"w": torch.zeros(1000)}
    encoding = secagg.Encoding(1.0, 2)
    vector, _ = secagg.encode({"w": torch.full((1000,), 0.5)}, current, 1, encoding)
    masked = [
        vector + secagg.pair_masks(keys[n], n, public, view, 1000 + 1) for n, view in zip("ab", (b"1", b"2"))
    ]
    with pytest.raises(secagg.SecAggError):
        secagg.check_sum(secagg.signed(secagg.unmask_sum(masked)), encoding, 2)


def test_any_threshold_of_shares_rebuilds_a_secret_and_a_sealed_share_opens_for_its_peer_only():
    seed, key = bytes(range(16)), secagg.new_private_key()
    parts = shares.split(seed, key, 3, 5)
    for subset in itertools.combinations(range(5), 3):
        assert shares.combine({i + 1: parts[i][:16] for i in subset}) == seed
        assert shares.combine({i + 1: parts[i][16:] for i in subset}) == key
    assert shares.combine({i + 1: parts[i][:16] for i in (0, 1)}) != seed
    a, b, c = (secagg.new_private_key() for _ in range(3))
    box = shares.seal(a, secagg.public_key(b), "view", "a", "b", parts[0])
    assert shares.unseal(b, secagg.public_key(a), "view", "a", "b", box) == parts[0]
    for opener, digest in ((c, "view"), (b, "other view")):
        with pytest.raises(secagg.SecAggError, match="does not authenticate"):
            shares.unseal(opener, secagg.public_key(a), digest, "a", "b", box)
