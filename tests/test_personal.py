"""Personal layers (federation.personal_layers): tensors that stay at each silo. None of them
crosses in an update or a masked vector, the registered global model keeps their starting values
whatever a silo sends, and a silo puts its own back into every model it scores or keeps."""

from unittest import mock

import pytest
import torch

from fedsilo.errors import FederationError
from fedsilo.messages import FitReport
from fedsilo.personal import personal_names
from fedsilo.privacy import secagg_silo
from fedsilo.privacy.secagg import float_names
from fedsilo.silo import participant, release_participants
from fedsilo.steps import Fit
from fedsilo.transport import InProcess
from fedsilo.weights import read_state, write_state
from tests.conftest import REPO
from tests.engine import run
from tests.scripted import Scripted

HEAD = "federation.personal_layers=[classifier.*]"
HEAD_NAMES = {"classifier.weight", "classifier.bias"}


@pytest.fixture(autouse=True)
def own_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "state"))


class Watching(InProcess):
    """Real in-process silos; each fit's starting global model and the update it sent are kept."""

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[dict, dict]] = []  # (global it trained from, update it sent)

    def ask(self, scenario, step, silos):
        answers = super().ask(scenario, step, silos)
        if isinstance(step, Fit):
            start = read_state(step.weights)
            for reply in answers.replies.values():
                if isinstance(reply, FitReport) and reply.update is not None:
                    self.sent.append((start, read_state(reply.update)))
        return answers


def test_a_personal_head_never_crosses_and_the_global_model_keeps_the_starting_head(tmp_path):
    silos = Watching()
    _, tracker = run(tmp_path, HEAD, transport=silos)
    assert len(silos.sent) == 4  # two silos, two rounds
    for start, update in silos.sent:
        for name in HEAD_NAMES:
            assert torch.equal(update[name], start[name])  # the global's values, not its own
        assert not torch.equal(update["bert.pooler.dense.weight"], start["bert.pooler.dense.weight"])
    for model in tracker.models.values():
        for name in HEAD_NAMES:
            assert torch.equal(model[name], tracker.models[0][name])
    own = list((tmp_path / "state").rglob("personal-*/round-00002.safetensors"))
    assert len(own) == 2  # each silo keeps its own trained head, on its own disk
    from safetensors.torch import load_file

    for path in own:
        head = load_file(str(path))
        assert set(head) == HEAD_NAMES and not torch.equal(
            head["classifier.weight"], tracker.models[0]["classifier.weight"]
        )


def test_under_secure_aggregation_no_personal_coordinate_enters_a_masked_vector(tmp_path):
    encoded = []
    real = secagg_silo.secagg.encode_change

    def recording(delta, weight, encoding):
        encoded.append(delta.clone())
        return real(delta, weight, encoding)

    with mock.patch.object(secagg_silo.secagg, "encode_change", recording):
        _, tracker = run(tmp_path, HEAD, "privacy.secure_aggregation=true", "federation.rounds=1")
    names = float_names(tracker.models[0])
    offsets, start = {}, 0
    for name in names:
        offsets[name] = (start, start + tracker.models[0][name].numel())
        start = offsets[name][1]
    assert len(encoded) >= 2 and all(delta.numel() == start for delta in encoded)
    for delta in encoded:
        for name in HEAD_NAMES:
            begin, end = offsets[name]
            assert bool((delta[begin:end] == 0).all()), name
        assert float(delta.abs().sum()) > 0
    for name in HEAD_NAMES:
        assert torch.equal(tracker.models[1][name], tracker.models[0][name])


@pytest.mark.parametrize("secure", [[], ["privacy.secure_aggregation=true"]], ids=["plain", "secure"])
def test_a_silo_that_sends_a_changed_head_does_not_move_the_global_head(tmp_path, secure):
    three = "silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]"
    shift = {"clinic-a": 0.01, "clinic-b": 0.02, "clinic-c": 0.015}  # every tensor, the head too
    script = Scripted(shift, dict.fromkeys(shift, 30))
    _, tracker = run(tmp_path, three, HEAD, "federation.rounds=1", *secure, transport=InProcess(script))
    for name in HEAD_NAMES:
        assert torch.equal(tracker.models[1][name], tracker.models[0][name])
    moved = tracker.models[1]["bert.pooler.dense.bias"] - tracker.models[0]["bert.pooler.dense.bias"]
    assert float(moved.mean()) == pytest.approx(0.015, rel=1e-3)


def test_a_silo_scores_exchanged_models_with_its_own_head_for_that_job(tmp_path):
    from fedsilo.scenario import load_scenario

    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", [HEAD])
    try:
        member = participant(scenario, "clinic-a")
        start = {name: t.clone() for name, t in member.model.state_dict().items()}
        ref = write_state(start, (tmp_path / "global.safetensors").as_uri())
        own = start | {"classifier.weight": torch.randn_like(start["classifier.weight"]) * 5}
        member.personal.remember("job-1", 1, own)
        with_own = member.evaluate(ref, "job-1")
        starting = member.evaluate(ref, "job-2")  # another job: no head of its own yet
        assert with_own.confusion != starting.confusion or with_own.loss != starting.loss
        assert member.outgoing(start)["classifier.weight"].equal(start["classifier.weight"])
    finally:
        release_participants()


def test_a_pattern_that_matches_no_tensor_or_every_weight_is_named(tmp_path):
    with pytest.raises(FederationError, match="federation.personal_layers: 'head.*' matches no tensor"):
        run(tmp_path, "federation.personal_layers=[head.*]")
    with pytest.raises(FederationError, match="matches every weight"):
        run(tmp_path, "federation.personal_layers=['*']")
    assert personal_names(["*LayerNorm*"], ["a.LayerNorm.weight", "b.dense.weight"]) == {"a.LayerNorm.weight"}


def test_a_retried_round_trains_the_personal_head_from_the_same_values(tmp_path):
    from fedsilo.scenario import load_scenario

    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml", [HEAD, "federation.local_steps=2"])
    job = (tmp_path / "job").as_uri()
    try:
        member = participant(scenario, "clinic-a")
        ref = write_state(member.model.state_dict(), f"{job}/global-000.safetensors")
        heads = []
        for _ in range(2):  # the same round twice: a Prefect retry, or a resume redoing it
            member.fit(ref, 1, f"{job}/round-001/clinic-a.safetensors")
            heads.append(member.personal.own(job))
        assert torch.equal(heads[0]["classifier.weight"], heads[1]["classifier.weight"])
        assert not torch.equal(heads[0]["classifier.weight"], read_state(ref)["classifier.weight"])
    finally:
        release_participants()


def test_a_silo_keeps_only_the_last_two_rounds_and_no_folder_for_what_it_does_not_use(tmp_path):
    from fedsilo.silo_store import RoundStore

    store = RoundStore("clinic-a", "personal")
    for round_index in (1, 2, 3):
        store.remember("job", round_index, {"w": torch.full((2,), float(round_index))})
    assert sorted(p.name for p in store._folder("job").iterdir()) == [
        "round-00002.safetensors",
        "round-00003.safetensors",
    ]
    assert float(store.latest("job", before_round=3)["w"][0]) == 2.0  # a retry of round 3 reads 2
    run(tmp_path / "job", HEAD, "federation.rounds=1")  # no SCAFFOLD, no Ditto: no folders for them
    kinds = {path.name.split("-")[0] for path in (tmp_path / "state").rglob("*-*") if path.is_dir()}
    assert "control" not in kinds and "ditto" not in kinds and "personal" in kinds
