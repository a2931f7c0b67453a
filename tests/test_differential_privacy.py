"""DP-SGD at the silos and central DP at the coordinator: the privacy spent, as Opacus counts it,
and what a silo under DP-SGD sends: every field noised, accounted or absent."""

import hashlib
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedsilo import messages
from fedsilo.data import load_silo_data
from fedsilo.engine import Coordinator, run_job
from fedsilo.errors import FederationError, SiloDeclined, StepFailed
from fedsilo.paths import JobPaths
from fedsilo.privacy import dp as dp_module
from fedsilo.privacy import secagg
from fedsilo.privacy.accounting import noise_for
from fedsilo.privacy.dp import SecureRandom, dp_fit, plan
from fedsilo.privacy.dp_sgd import DPTraining
from fedsilo.scenario import DPSpec, ScenarioError, load_scenario, validate_scenario
from fedsilo.silo import (
    ALL_LABELS,
    SiloParticipant,
    _digest,
    initial_state,
    release_participants,
    silo_secret,
    summarize,
)
from fedsilo.silo_steps import handle, job_models
from fedsilo.steps import Evaluate, Fit, Score
from fedsilo.training import FitSettings
from fedsilo.transport import InProcess
from fedsilo.weights import read_state, write_state
from models import build_cnn
from tests.conftest import REPO, shared_file
from tests.engine import Recorder, run
from tests.test_training import toy_images

SMOKE = REPO / "scenarios" / "smoke.yaml"
SMOKE_TRAIN = 30  # rows each smoke silo trains on (40 generated, a quarter held out)
SMOKE_TEST = 10
SMOKE_BATCH = 8
COUNT_NOISE = DPSpec.model_fields["count_noise"].default
TARGET = 4.0


@pytest.fixture(autouse=True)
def silo_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "silo-state"))


def opacus_epsilon(noise: float, sample_rate: float, steps: int, delta: float, count_noise=None) -> float:
    """The accountant stepped once per optimizer step, as Opacus's PrivacyEngine does it, and once
    more for the noised training count (a Gaussian release at sampling rate 1) when there is one."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=sample_rate)
    if count_noise:
        accountant.step(noise_multiplier=count_noise, sample_rate=1.0)
    return accountant.get_epsilon(delta)


def smoke_epsilon(count: int, rounds: int, done: int, target=TARGET, noise=None) -> float:
    """What Opacus gives a smoke silo that reported `count` after `done` of `rounds` rounds: its
    sampling rate and steps follow from the noised count, its noise from the budget."""
    q, steps = min(1.0, SMOKE_BATCH / count), math.ceil(count / SMOKE_BATCH)
    sigma = noise or noise_for(target, 1e-5, q, steps * rounds, COUNT_NOISE)
    return opacus_epsilon(sigma, q, steps * done, 1e-5, COUNT_NOISE)


class Keeping(InProcess):
    """In-process silos that keep a copy of every plain update the coordinator receives."""

    def __init__(self):
        super().__init__()
        self.updates = {}

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        if isinstance(step, Fit):
            kept = {
                (step.round_index, s): read_state(r.update) for s, r in answers.replies.items() if r.update
            }
            self.updates.update(kept)
        return answers


class Capturing(InProcess):
    """In-process silos; every (step, silo, reply) that reaches the coordinator is kept."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        self.seen += [(step, silo, reply) for silo, reply in answers.replies.items()]
        return answers


class Watching(Recorder):
    """The engine tests' tracker, also keeping each silo's data summary (its run's dataset input and
    its num_train, num_test and data_version params in MLflow)."""

    def __init__(self):
        super().__init__()
        self.data = {}

    def log_data(self, summary):
        self.data[summary.silo] = summary


def dp_job(tmp_path, *overrides):
    """A smoke job under DP-SGD (target epsilon 4) with every reply and MLflow-facing value kept."""
    scenario = load_scenario(SMOKE, [f"privacy.dp.target_epsilon={TARGET}", *overrides])
    silos, tracker = Capturing(), Watching()
    paths = JobPaths.under(tmp_path / "jobs", "job")
    try:
        Coordinator(scenario, "job", silos, tracker, paths).run()
    finally:
        release_participants()
    return scenario, silos.seen, tracker, paths


def raw_digest(*parts) -> str:
    """The data version before keying: a plain sha256 of the rows, which confirms a guessed row."""
    hasher = hashlib.sha256()
    for examples in parts:
        hasher.update("\x1f".join(examples.inputs).encode())
        hasher.update("\x1f".join(map(str, examples.labels)).encode())
    return hasher.hexdigest()


# How the guarantee covers each field a silo sends under DP-SGD (README "What each setting covers"):
# noised: the output of DP-SGD or of the count's noise, or computed from them alone;
# accounted: computed from the noised count and the scenario (its privacy cost is in epsilon);
# absent: not sent (NaN or empty); keyed: a keyed digest, telling only whether the rows changed;
# public: the scenario's or the protocol's own values, or randomness independent of the rows;
# test split: exact, on the held-out split, and only of this job's models.
REPLY_FIELDS = {
    "DataSummary": {
        "silo": "public",
        "train_counts": "noised",
        "test_counts": "test split",
        "input_shape": "public",
        "version": "keyed",
    },
    "FitReport": {
        "silo": "public",
        "round": "public",
        "update": "noised",
        "num_examples": "noised",
        "train_loss": "absent",
        "local": "test split",
        "seconds": "absent",
        "steps": "accounted",
        "epsilon": "accounted",
        "public_key": "public",
        "clipped": "noised",
        "refused": "accounted",
        "update_norm": "noised",  # the norm of DP-SGD's output: post-processing
    },
    "Evaluation": dict.fromkeys(("silo", "accuracy", "f1_macro", "loss", "confusion"), "test split")
    | {"silo": "public", "validation": "absent"},  # under DP the job keeps its last round
    "Scores": {"silo": "public", "models": "test split"},
    "Kept": {  # under DP a silo keeps the global model and trains nothing else
        "silo": "public",
        "kept": "public",
        "validation": "absent",
        "kept_evaluation": "test split",
        "alone": "absent",
        "alone_reused": "public",
        "note": "public",
        "personalized": "absent",
    },
    "MaskedUpdate": {"silo": "public", "round": "public", "attempt": "public", "vector": "noised"},
    "SharedKeys": {"silo": "public", "round": "public", "bundle": "public", "seed_digest": "public"},
    "RevealedShares": {"silo": "public", "round": "public", "seeds": "public", "mask_keys": "public"},
}
SILO_RUN_METRICS = {  # a silo's MLflow run: metrics by round
    "global_accuracy": "test split",
    "global_f1_macro": "test split",
    "local_accuracy": "test split",
    "local_f1_macro": "test split",
    "num_examples": "noised",
    "fit_steps": "accounted",
    "epsilon": "accounted",
    "clipped_coordinates": "noised",
    "answered": "public",
    "train_loss": "absent",
    "fit_seconds": "absent",
    "kept_accuracy": "test split",  # the global model's, which a silo keeps under DP
    "kept_f1_macro": "test split",
}


def test_every_reply_field_under_dp_sgd_is_classified():
    """A field added to a silo's reply must say how DP-SGD covers it (here and in the README)."""
    for name, how in REPLY_FIELDS.items():
        record = getattr(messages, name, None)
        if record is not None:
            assert {f.name for f in fields(record)} == set(how), name


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure-aggregation"])
def test_under_dp_sgd_every_field_a_silo_sends_is_noised_accounted_or_absent(tmp_path, secure):
    overrides = ["privacy.secure_aggregation=true"] if secure else []
    scenario, seen, tracker, paths = dp_job(tmp_path, *overrides)
    rounds = scenario.federation.rounds
    summaries = {silo: r for _, silo, r in seen if isinstance(r, messages.DataSummary)}
    fits = [r for _, _, r in seen if isinstance(r, messages.FitReport)]
    assert set(summaries) == {"clinic-a", "clinic-b"} and len(fits) == 2 * rounds
    for _, silo, reply in seen:
        how = REPLY_FIELDS[type(reply).__name__]  # a reply type nobody classified is a KeyError
        assert {f.name for f in fields(reply)} == set(how)
        for name, kind in how.items():
            value = getattr(reply, name)
            if kind == "absent":  # a number sent as NaN, or nothing at all
                assert value in (None, {}) or (isinstance(value, float) and math.isnan(value)), name
            if kind == "public" and name == "silo":
                assert value == silo
    for silo, summary in summaries.items():
        data = load_silo_data(scenario, silo)
        # noised: one total, no label; the same count every time it is reported
        (count,) = summary.train_counts.values()
        assert list(summary.train_counts) == [ALL_LABELS]
        assert {r.num_examples for r in fits if r.silo == silo} == {count}
        # test split: its size only, which every confusion matrix below shows anyway
        assert summary.test_counts == {ALL_LABELS: SMOKE_TEST}
        # keyed: the rows under the silo's own key, never their plain digest
        assert summary.version == _digest(silo_secret(silo), data.train, data.test)
        assert summary.version != raw_digest(data.train, data.test)
        assert tracker.data[silo] == summary  # what MLflow's dataset input and params are made from
    for fit in fits:
        count = summaries[fit.silo].num_train
        assert fit.steps == math.ceil(count / SMOKE_BATCH)  # from the noised count, not from 30
        assert fit.epsilon == pytest.approx(smoke_epsilon(count, rounds, fit.round), rel=1e-9)
        assert fit.epsilon <= TARGET and fit.refused == ""
        assert (fit.update is None) == secure and (fit.public_key != "") == secure
    for step, _, reply in seen:  # test split: exact, and only of this job's models
        evaluations = [reply] if isinstance(reply, messages.Evaluation) else []
        evaluations += list(reply.models.values()) if isinstance(reply, messages.Scores) else []
        evaluations += [reply.local] if isinstance(reply, messages.FitReport) else []
        for evaluation in evaluations:
            assert sum(map(sum, evaluation.confusion)) == SMOKE_TEST
            assert evaluation.validation is None  # no validation counts leave a DP silo
        scored = [step.weights] if isinstance(step, Evaluate) else []
        scored += list(step.models.values()) if isinstance(step, Score) else []
        assert all(ref.uri in job_models(scenario, paths.root) for ref in scored)
    for silo, metrics in tracker.silos.items():  # what the silo's MLflow run carries
        kinds = {name: SILO_RUN_METRICS[name] for name in metrics}  # an unclassified metric: KeyError
        assert "absent" not in kinds.values()
        assert set(metrics["num_examples"].values()) == {summaries[silo].num_train}
        assert max(metrics["epsilon"].values()) <= TARGET
    assert not any(name in tracker.rounds[rounds] for name in ("train_loss", "fit_seconds"))
    assert tracker.rounds[rounds]["max_silo_epsilon"] <= TARGET


def test_each_silo_logs_the_epsilon_opacus_accounts_for_every_round(tmp_path):
    _, tracker = run(tmp_path, f"privacy.dp.target_epsilon={TARGET}", "federation.rounds=3")
    for silo in ("clinic-a", "clinic-b"):
        logged = tracker.silos[silo]["epsilon"]
        (count,) = set(tracker.silos[silo]["num_examples"].values())
        expected = {r: smoke_epsilon(count, 3, r) for r in (1, 2, 3)}
        assert logged == pytest.approx(expected, rel=1e-9)
    assert tracker.rounds[3]["max_silo_epsilon"] <= TARGET
    assert tracker.rounds[3]["max_silo_epsilon"] > TARGET - 0.1  # the whole budget is spent, not a fraction


def test_a_silo_whose_budget_is_spent_stops_and_says_so(tmp_path):
    scenario = load_scenario(SMOKE, ["privacy.dp.noise_multiplier=1.0", "federation.rounds=3"])
    counts = [summarize(scenario, silo).num_train for silo in scenario.silo_names()]  # drawn and kept
    first_round = max(smoke_epsilon(count, 3, 1, noise=1.0) for count in counts)
    budget = f"privacy.dp.target_epsilon={first_round * 1.0001:.6f}"
    with pytest.raises(FederationError) as error:
        run(tmp_path, "privacy.dp.noise_multiplier=1.0", budget, "federation.rounds=3")
    assert "round 2" in str(error.value) and "privacy.dp.target_epsilon" in str(error.value)


def test_the_noised_count_is_drawn_once_and_counted_in_epsilon(tmp_path):
    scenario = load_scenario(SMOKE, ["privacy.dp.noise_multiplier=1.0"])
    first = summarize(scenario, "clinic-a").train_counts
    assert summarize(scenario, "clinic-a").train_counts == first  # a second draw would average away
    member = SiloParticipant(scenario, "clinic-a")
    assert member.num_examples == first[ALL_LABELS]
    settings = FitSettings(epochs=1, batch_size=SMOKE_BATCH, learning_rate=1e-3, optimizer="adamw", seed=0)
    dp = plan(scenario.privacy.dp, member.num_examples, settings, rounds=2)
    assert dp.epsilon_after(0) == pytest.approx(opacus_epsilon(1.0, 1.0, 0, 1e-5, COUNT_NOISE))
    assert dp.epsilon_after(0) > 0 and dp.expected_batch_size == round(dp.sample_rate * member.num_examples)


def test_a_silo_declines_to_train_when_delta_is_not_below_one_over_n(tmp_path):
    scenario = load_scenario(SMOKE, ["privacy.dp.noise_multiplier=1.0"])
    member = SiloParticipant(scenario, "clinic-a")
    start = write_state(initial_state(scenario, member.input_shape), str(tmp_path / "global-000.safetensors"))
    update_uri = str(tmp_path / "round-001" / "clinic-a.safetensors")
    wide = DPTraining(DPSpec(noise_multiplier=1.0, delta=1 / member.num_examples))  # not *below* 1/n
    report = member.fit(start, 1, update_uri, training=wide)
    assert report.update is None and report.steps == 0 and math.isnan(report.train_loss)
    assert "privacy.dp.delta" in report.refused and f"1/n = 1/{member.num_examples}" in report.refused
    narrow = DPTraining(DPSpec(noise_multiplier=1.0, delta=0.5 / member.num_examples))
    assert member.fit(start, 1, update_uri, training=narrow).refused == ""


def test_the_scenario_refuses_dp_without_labels_or_with_delta_not_below_one_over_n():
    with pytest.raises(
        ScenarioError, match=rf"privacy\.dp\.delta 0\.05 must be below 1/n.*{SMOKE_TRAIN} rows"
    ):
        load_scenario(SMOKE, ["privacy.dp.noise_multiplier=1", "privacy.dp.delta=0.05"])
    load_scenario(SMOKE, ["privacy.dp.noise_multiplier=1", "privacy.dp.delta=0.03"])  # 0.03 < 1/30
    raw = {
        "name": "t",
        "domain": "medical",
        "model": {"kind": "bert", "source": "tiny-random"},
        "data": {"source": {"kind": "csv", "path": "x.csv"}, "partition": {"kind": "iid"}},
        "silos": [{"name": "a"}, {"name": "b"}],
        "privacy": {"dp": {"target_epsilon": 4}},
    }
    with pytest.raises(ScenarioError, match=r"privacy\.dp needs data\.labels"):
        validate_scenario(raw)
    validate_scenario(raw | {"data": raw["data"] | {"labels": ["no", "yes"]}})  # named: accepted
    del raw["privacy"]
    validate_scenario(raw)  # without DP the labels may come from the data


def test_under_dp_a_silo_scores_only_this_jobs_models(tmp_path):
    scenario = load_scenario(SMOKE, ["privacy.dp.target_epsilon=4"])
    job = JobPaths.under(tmp_path / "jobs", "job")
    state = initial_state(scenario, ())
    first = write_state(state, job.global_uri(0))
    elsewhere = write_state(state, str(tmp_path / "crafted" / "global-001.safetensors"))
    try:
        with pytest.raises(SiloDeclined, match="only this job's models"):
            handle(scenario, "clinic-a", Evaluate(elsewhere, "probe"))  # a step that names no job
        assert handle(scenario, "clinic-a", Evaluate(first, "round-0", job.root)).silo == "clinic-a"
        with pytest.raises(SiloDeclined, match="crafted/global-001.safetensors is not one"):
            handle(scenario, "clinic-a", Score({"global": first, "probe": elsewhere}, "matrix", job.root))
        champion = write_state(state, job.champion_uri())
        scored = handle(scenario, "clinic-a", Score({"champion": champion}, "m", job.root))
        assert set(scored.models) == {"champion"}
        plain = load_scenario(SMOKE)  # without DP nothing is checked
        assert handle(plain, "clinic-a", Evaluate(elsewhere, "any")).silo == "clinic-a"
    finally:
        release_participants()


def test_secure_mode_draws_from_chacha20_and_still_learns(monkeypatch):
    source = SecureRandom()
    noise = source.gaussian((200_000,), 2.0)
    assert abs(float(noise.mean())) < 0.02 and float(noise.std()) == pytest.approx(2.0, rel=0.01)
    assert not torch.equal(source.gaussian((8,), 1.0), source.gaussian((8,), 1.0))  # never a stream twice
    drawn, original = [], SecureRandom.gaussian

    def counted(self, shape, std):
        drawn.append(std)
        return original(self, shape, std)

    monkeypatch.setattr(SecureRandom, "gaussian", counted)
    data = toy_images(128)
    model = build_cnn(1, 16, 2, seed=0)
    settings = FitSettings(epochs=1, batch_size=16, learning_rate=1e-2, optimizer="sgd", seed=0, steps=40)
    dp = plan(DPSpec(noise_multiplier=0.3, secure_mode=True), len(data), settings, rounds=1)
    dp_fit(model, data, settings, dp)
    assert len(drawn) == 40 * len(list(model.parameters()))  # every step's noise, for every tensor
    assert drawn == pytest.approx([0.3] * len(drawn))  # noise_multiplier x max_grad_norm
    with torch.no_grad():
        accuracy = (model(data.features["pixel_values"]).argmax(1) == data.labels).double().mean()
    assert accuracy > 0.8  # the secure noise is the same noise: DP-SGD still learns the toy images


def test_secure_mode_reaches_the_silos_plan_from_the_scenario():
    for secure in (True, False):
        scenario = load_scenario(
            SMOKE, ["privacy.dp.noise_multiplier=1.0", f"privacy.dp.secure_mode={secure}"]
        )
        member = SiloParticipant(scenario, "clinic-a")
        training = DPTraining(scenario.privacy.dp)
        training.budget(member, member._settings(1, None, {}), 1)
        assert training.plan.secure_mode is secure


def test_an_unsupported_model_is_a_fedsilo_error():
    class BatchNormed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(4)

    with pytest.raises(StepFailed, match="Opacus cannot train this model"):
        dp_module.freeze_unsupported(BatchNormed())


def test_the_data_version_is_keyed_by_the_silos_own_secret(tmp_path, monkeypatch):
    scenario = load_scenario(SMOKE)
    version = summarize(scenario, "clinic-a").version
    assert summarize(scenario, "clinic-a").version == version  # same rows, same key: same version
    data = load_silo_data(scenario, "clinic-a")
    assert version == _digest(silo_secret("clinic-a"), data.train, data.test)
    assert version != raw_digest(data.train, data.test)
    assert (tmp_path / "silo-state" / "clinic-a" / "data-version.key").stat().st_mode & 0o077 == 0
    assert _digest(silo_secret("clinic-b"), data.train, data.test) != version  # another silo's key
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "another-host"))
    assert summarize(scenario, "clinic-a").version != version  # another key for the same rows


def test_dp_sgd_trains_the_encoder_and_leaves_the_embeddings_as_they_were(tmp_path):
    silos = Keeping()
    _, tracker = run(tmp_path, "privacy.dp.noise_multiplier=0.5", "federation.rounds=1", transport=silos)
    start, update = tracker.models[0], silos.updates[(1, "clinic-a")]
    changed = {n for n, t in update.items() if t.is_floating_point() and not torch.equal(t, start[n])}
    assert changed and not any("embeddings" in n for n in changed)
    assert any("encoder.layer.0.attention" in n for n in changed)
    assert any("classifier" in n for n in changed)


def test_dp_sgd_trains_the_cnn_whole_and_learns():
    data = toy_images(128)
    model = build_cnn(1, 16, 2, seed=0)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    settings = FitSettings(epochs=1, batch_size=16, learning_rate=1e-2, optimizer="sgd", seed=0, steps=40)
    dp = plan(DPSpec(noise_multiplier=0.3, max_grad_norm=1.0), len(data), settings, rounds=1)
    dp_fit(model, data, settings, dp)
    assert all(not torch.equal(before[n], t) for n, t in model.state_dict().items())
    with torch.no_grad():
        accuracy = (model(data.features["pixel_values"]).argmax(1) == data.labels).double().mean()
    assert accuracy > 0.8  # toy images are separable: DP-SGD with mild noise still learns them


def test_central_dp_clips_each_silo_and_counts_it_once(tmp_path):
    silos = Keeping()
    clip = "privacy.central_dp.clipping_norm=0.05"
    _, tracker = run(tmp_path, "privacy.central_dp.noise_multiplier=1e-9", clip, transport=silos)
    start, new = tracker.models[0], tracker.models[1]
    names = secagg.float_names(start)
    clipped = []
    for silo in ("clinic-a", "clinic-b"):
        local = silos.updates[(1, silo)]
        norm = math.sqrt(sum(float((local[n].double() - start[n].double()).pow(2).sum()) for n in names))
        assert norm > 0.05  # so clipping did something
        clipped.append({n: (local[n].double() - start[n].double()) * 0.05 / norm for n in names})
    for name in names:  # the unweighted mean of the clipped changes (the noise is 1e-9 * 0.05)
        expected = start[name].double() + (clipped[0][name] + clipped[1][name]) / 2
        torch.testing.assert_close(new[name].double(), expected, atol=1e-6, rtol=0)


def test_central_dp_through_secure_aggregation_clips_at_the_silo(tmp_path):
    overrides = ("privacy.central_dp.noise_multiplier=1e-9", "privacy.central_dp.clipping_norm=0.05")
    _, plain = run(tmp_path / "plain", *overrides)
    _, secure = run(tmp_path / "secure", *overrides, "privacy.secure_aggregation=true")
    for name, tensor in plain.models[1].items():
        torch.testing.assert_close(secure.models[1][name], tensor, atol=1e-6, rtol=0)


def test_privacy_options_that_cannot_hold_together_are_named():
    path = REPO / "scenarios" / "smoke.yaml"
    cases = {
        "evaluation.personalize_steps": ["privacy.dp.target_epsilon=4", "evaluation.personalize_steps=5"],
        "fedprox": ["privacy.dp.target_epsilon=4", "federation.strategy=fedprox"],
        "set target_epsilon, noise_multiplier or both": ["privacy.dp.delta=1e-5"],
        "privacy.central_dp": [
            "privacy.central_dp={noise_multiplier: 1, clipping_norm: 1}",
            "federation.strategy=median",
        ],
    }
    for expected, overrides in cases.items():
        with pytest.raises(ScenarioError, match=expected.replace(".", r"\.")):
            load_scenario(path, overrides)


def test_every_privacy_option_at_once_on_pneumonia_images(tmp_path):
    """The CNN path on real X-rays: DP-SGD at the silos, a masked sum, central noise on it."""
    small = tmp_path / "pneumonia-small.npz"
    with np.load(shared_file("pneumoniamnist", "pneumoniamnist.npz")) as full:
        np.savez(small, **{k: v[:200] for k, v in full.items()})
    overrides = [
        f"data.source.path={small}",
        "model.source=random",
        "federation.rounds=2",
        "privacy.secure_aggregation=true",
        "privacy.dp.target_epsilon=8",
        "privacy.central_dp={noise_multiplier: 1.0, clipping_norm: 1.0}",
    ]
    scenario = load_scenario(REPO / "scenarios" / "medical-imaging.yaml", overrides)
    tracker = Recorder()
    result = run_job(scenario, InProcess(), job="job", tracker=tracker)
    assert len(result.curve) == 3
    assert all(0 < e <= 8 for e in tracker.silos["hospital-a"]["epsilon"].values())
    central = [tracker.rounds[r]["central_epsilon"] for r in (1, 2)]
    assert central == pytest.approx([opacus_epsilon(1.0, 1.0, r, 1e-5) for r in (1, 2)])
