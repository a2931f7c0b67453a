"""The silo's DP-SGD budget ledger: the silo, not the round number a request carries, decides what
it has spent, across repeated rounds, restarts, concurrent processes and failed trainings.
Real Opacus accounting throughout; the epsilon of a ledger file is recomputed here step by step."""

import json
import subprocess
import sys

import pytest
from opacus.accountants import RDPAccountant

from fedsilo.errors import PrivacyBudgetExhausted, SiloDeclined
from fedsilo.privacy import dp as dp_module
from fedsilo.privacy.budget_ledger import LEDGER_FILE, BudgetKey, BudgetLedger, Charge
from fedsilo.privacy.dp_sgd import DPTraining
from fedsilo.privacy.pending import state_folder
from fedsilo.scenario import load_scenario
from fedsilo.silo import SiloParticipant, initial_state
from fedsilo.weights import write_state
from tests.conftest import REPO

SMOKE = REPO / "scenarios" / "smoke.yaml"  # 2 rounds, two silos of 30 training rows, a tiny BERT
TARGET = 4.0
DELTA = 1e-5


@pytest.fixture(autouse=True)
def silo_state(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "silo-state"))


def ledger_file(silo: str = "clinic-a"):
    return state_folder(silo) / LEDGER_FILE


def file_epsilon(path, version: str) -> float:
    """epsilon of one budget in a ledger file, as Opacus's PrivacyEngine counts it: the accountant
    stepped once per optimizer step of every charge, then once for each count release."""
    entry = json.loads(path.read_text())["budgets"][version]
    accountant = RDPAccountant()
    for charge in entry["charges"]:
        for _ in range(charge["steps"]):
            accountant.step(noise_multiplier=charge["noise_multiplier"], sample_rate=charge["sample_rate"])
    for noise in {c["count_noise"] for c in entry["charges"] if c["count_noise"]}:
        accountant.step(noise_multiplier=noise, sample_rate=1.0)
    return accountant.get_epsilon(entry["delta"]) if entry["charges"] else 0.0


class Silo:
    """clinic-a of the smoke scenario under DP-SGD (target epsilon 4 over 2 rounds), fitting from
    the initial model; `fit` asks any round number, as a coordinator could."""

    def __init__(self, tmp_path, *overrides: str):
        self.scenario = load_scenario(SMOKE, [f"privacy.dp.target_epsilon={TARGET}", *overrides])
        self.member = SiloParticipant(self.scenario, "clinic-a")
        start = initial_state(self.scenario, self.member.input_shape)
        self.start = write_state(start, str(tmp_path / "global-000.safetensors"))
        self.folder = tmp_path

    def fit(self, round_index: int):
        update_uri = str(self.folder / f"round-{round_index:03d}" / "clinic-a.safetensors")
        training = DPTraining(self.scenario.privacy.dp, job="test-job")
        return self.member.fit(self.start, round_index, update_uri, training=training)

    @property
    def key(self) -> BudgetKey:
        return BudgetKey(self.member.rows_version, DELTA)


def test_repeated_and_out_of_range_rounds_never_spend_past_the_target(tmp_path):
    silo = Silo(tmp_path)
    reports = [silo.fit(r) for r in (1, 1, 0, 7)]
    trained, declined = reports[:2], reports[2:]
    assert [r.refused for r in trained] == ["", ""] and all(r.update for r in trained)
    spent = file_epsilon(ledger_file(), silo.member.rows_version)
    assert trained[0].epsilon < trained[1].epsilon == pytest.approx(spent, rel=1e-9)
    assert TARGET - 0.1 < spent <= TARGET  # two fits spend the job's whole budget, never more
    for report in declined:  # the ledger decides, not the round index (0 and 7 included)
        assert report.update is None and report.steps == 0
        assert f"round {report.round} would take epsilon to" in report.refused
        assert "privacy.dp.target_epsilon" in report.refused and str(ledger_file()) in report.refused
        assert report.epsilon == pytest.approx(spent, rel=1e-9)
    entry = json.loads(ledger_file().read_text())["budgets"][silo.member.rows_version]
    assert [(c["job"], c["round"]) for c in entry["charges"]] == [("test-job", 1), ("test-job", 1)]
    assert ledger_file().stat().st_mode & 0o777 == 0o600


def test_a_restart_keeps_what_was_spent(tmp_path):
    first = Silo(tmp_path)
    assert [first.fit(r).refused for r in (1, 2)] == ["", ""]
    spent = file_epsilon(ledger_file(), first.member.rows_version)
    assert BudgetLedger(ledger_file()).spent(first.key) == pytest.approx(spent, rel=1e-9)
    again = Silo(tmp_path)  # a new process: a new participant, the same state folder
    assert again.member.version == first.member.version
    report = again.fit(1)  # a second job on the same data and scenario, from round 1
    assert report.update is None and "new rows or a higher" in report.refused
    assert report.epsilon == pytest.approx(spent, rel=1e-9)
    assert file_epsilon(ledger_file(), first.member.rows_version) == pytest.approx(spent, rel=1e-9)


RESERVE = """
import pathlib, sys, time
from fedsilo.errors import PrivacyBudgetExhausted
from fedsilo.privacy.budget_ledger import BudgetKey, BudgetLedger, Charge, composed_epsilon
path, ready, go = sys.argv[1:]
ledger, key = BudgetLedger(path), BudgetKey("v1", 1e-5)
composed_epsilon([Charge(1.0, 0.05, 20, 10.0)], 1e-5)  # Opacus imported before the start
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.005)
made = 0
try:
    while True:
        ledger.reserve(key, Charge(1.0, 0.05, 20, 10.0, job=ready), 8.0)
        made += 1
except PrivacyBudgetExhausted:
    print(made)
"""


def test_two_processes_reserving_at_once_never_pass_the_target(tmp_path):
    path, go = tmp_path / LEDGER_FILE, tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in (0, 1)]
    runs = [
        subprocess.Popen([sys.executable, "-c", RESERVE, str(path), str(r), str(go)], stdout=subprocess.PIPE)
        for r in ready
    ]
    try:
        while not all(r.exists() for r in ready):
            assert all(run.poll() is None for run in runs), "a reserving process ended early"
        go.touch()
        made = [int(run.communicate(timeout=120)[0]) for run in runs]
    finally:
        for run in runs:
            run.kill()
    allowed = 0  # how many such charges fit in epsilon 8, one after the other
    ledger, key = BudgetLedger(tmp_path / "alone.json"), BudgetKey("v1", 1e-5)
    with pytest.raises(PrivacyBudgetExhausted):
        while True:
            ledger.reserve(key, Charge(1.0, 0.05, 20, 10.0), 8.0)
            allowed += 1
    assert sum(made) == allowed and all(made)  # both took part, and no reservation was lost
    assert 0 < file_epsilon(path, "v1") <= 8.0


def test_a_training_that_fails_gives_its_reservation_back(tmp_path, monkeypatch):
    ledger, key = BudgetLedger(tmp_path / LEDGER_FILE), BudgetKey("v1", DELTA)
    kept = ledger.reserve(key, Charge(1.0, 0.05, 20, 10.0), TARGET)
    cancelled = ledger.reserve(key, Charge(1.0, 0.05, 20, 10.0), TARGET)
    assert ledger.spent(key) == pytest.approx(cancelled.epsilon) and cancelled.epsilon > kept.epsilon
    cancelled.cancel()
    assert ledger.spent(key) == pytest.approx(kept.epsilon)

    silo = Silo(tmp_path / "fit")

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(dp_module, "dp_fit", broken)
        with pytest.raises(RuntimeError, match="out of memory"):
            silo.fit(1)
    assert BudgetLedger(ledger_file()).charges(silo.key) == []  # reserved, then given back
    assert [silo.fit(r).refused for r in (1, 2)] == ["", ""]  # the whole budget is still there


def test_new_data_starts_a_new_budget(tmp_path):
    old = Silo(tmp_path / "old")
    assert [old.fit(r).refused != "" for r in (1, 2, 3)] == [False, False, True]
    new = Silo(tmp_path / "new", "data.source.rows_per_silo=44")  # other rows: a new data version
    assert new.member.version != old.member.version
    assert [new.fit(r).refused for r in (1, 2)] == ["", ""]
    for version in (old.member.rows_version, new.member.rows_version):
        assert TARGET - 0.1 < file_epsilon(ledger_file(), version) <= TARGET


def test_another_split_or_scenario_name_on_the_same_rows_draws_from_the_same_budget(tmp_path):
    first = Silo(tmp_path / "a")
    assert [first.fit(r).refused for r in (1, 2)] == ["", ""]
    renamed = Silo(tmp_path / "b", "evaluation.test_fraction=0.3", "name=renamed")  # a coordinator's choice
    assert renamed.member.version != first.member.version  # another split, another reported version
    assert renamed.member.rows_version == first.member.rows_version  # the same records
    report = renamed.fit(1)
    assert report.update is None and "new rows or a higher" in report.refused


def test_a_budget_keeps_its_delta_and_a_silo_with_an_unusable_ledger_declines(tmp_path):
    ledger = BudgetLedger(tmp_path / LEDGER_FILE)
    ledger.reserve(BudgetKey("v1", DELTA), Charge(1.0, 0.05, 20), None)
    with pytest.raises(SiloDeclined, match="at delta 1e-05"):
        ledger.reserve(BudgetKey("v1", 1e-6), Charge(1.0, 0.05, 20), None)
    ledger.reserve(BudgetKey("v2", 1e-6), Charge(1.0, 0.05, 20), None)  # another budget
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with pytest.raises(SiloDeclined, match="cannot be read"):
        ledger.reserve(BudgetKey("v1", DELTA), Charge(1.0, 0.05, 20), None)
    silo = Silo(tmp_path / "fit")
    ledger_file().mkdir()  # a ledger that cannot be read: the silo declines rather than train uncounted
    report = silo.fit(1)
    assert report.update is None and "this silo does not train uncounted" in report.refused


def test_every_noised_count_a_silo_releases_is_charged_and_a_flood_of_splits_is_declined(tmp_path):
    from fedsilo.errors import PrivacyBudgetExhausted
    from fedsilo.silo import summarize, with_local_data
    from tests.stack import export_silo_files

    rows = export_silo_files(load_scenario(SMOKE), tmp_path / "rows")["clinic-a"]  # the silo's own file
    with pytest.raises(PrivacyBudgetExhausted):
        for seed in range(300):  # a coordinator asking for split after split of the same rows
            asked = load_scenario(SMOKE, [f"privacy.dp.target_epsilon={TARGET}", f"federation.seed={seed}"])
            summarize(with_local_data(asked, "clinic-a", str(rows)), "clinic-a")
    (entry,) = json.loads(ledger_file().read_text())["budgets"].values()
    assert len(entry["charges"]) == len({c["count_draw"] for c in entry["charges"]}) >= 2
    assert BudgetLedger(ledger_file()).spent(BudgetKey(entry["rows"], DELTA)) <= TARGET
