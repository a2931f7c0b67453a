"""Who is speaking: signed requests checked at the silo's gate, signed replies checked by the
coordinator, policies, the audit trails of an embedded job, and signed secure-aggregation keys.
Real keys and real JWS throughout; silos are scripted (no training)."""

import base64
import json

import pytest

from fedsilo.engine import NullTracker, run_job
from fedsilo.errors import FederationError
from fedsilo.messages import DataSummary
from fedsilo.privacy.pending import state_folder
from fedsilo.privacy.secagg import SecAggError
from fedsilo.privacy.secagg_identity import check_peer_keys, signed_bundle
from fedsilo.scenario import load_scenario
from fedsilo.steps import Prepare
from fedsilo.transport import InProcess
from fedsilo.trust import envelope
from fedsilo.trust.audit import AuditTrail, verify_chain
from fedsilo.trust.credentials import ephemeral, local_gate
from fedsilo.trust.gate import SiloGate
from fedsilo.trust.identity import Identity
from fedsilo.trust.policy import SiloPolicy
from fedsilo.trust.seen import SeenRequests
from fedsilo.trust.signer import Signer
from tests.conftest import REPO
from tests.engine import run
from tests.scripted import Scripted

SMOKE = REPO / "scenarios" / "smoke.yaml"
SILOS = ["clinic-a", "clinic-b"]


@pytest.fixture
def keys(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "state"))
    return ephemeral(SILOS)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def signer_of(keys) -> Signer:
    return Signer(keys.coordinator, keys.roster, "job", AuditTrail(None, "coordinator"))


class Counting:
    """A silo's work that counts its calls and describes a tiny data set."""

    def __init__(self):
        self.calls = 0

    def __call__(self, scenario, step):
        self.calls += 1
        return DataSummary("clinic-a", {"0": 5, "1": 5}, {"0": 2, "1": 2})


def test_a_replayed_request_is_refused_also_after_a_restart_and_named_in_the_audit_trail(keys, tmp_path):
    scenario, signer, work = load_scenario(SMOKE), signer_of(keys), Counting()
    sent = signer.request(scenario, Prepare(), "clinic-a", 60)

    def gate() -> SiloGate:  # the silo's gate as a restarted worker builds it: same replay store
        audit = AuditTrail(tmp_path / "silo-audit.jsonl", "clinic-a")
        seen = SeenRequests(tmp_path / "seen.sqlite")
        return SiloGate(keys.silos["clinic-a"], keys.coordinator.public_key, seen, audit)

    assert signer.accept(sent, gate().serve(sent.token, work)).outcome == "served"
    again = signer.accept(sent, gate().serve(sent.token, work))
    assert again.outcome == "refused" and "replay" in again.reason and work.calls == 1
    records = verify_chain(tmp_path / "silo-audit.jsonl", keys.roster)
    assert records.ok and [r["decision"] for r in records.records] == ["served", "refused"]
    assert "replay" in records.records[1]["reason"]


def test_a_forged_misaddressed_expired_or_changed_request_runs_nothing(keys):
    scenario, signer, work = load_scenario(SMOKE), signer_of(keys), Counting()
    gate = local_gate(keys, "clinic-a")
    forger = Signer(Identity.generate("coordinator"), keys.roster, "job", AuditTrail(None, "coordinator"))
    forged = forger.request(scenario, Prepare(), "clinic-a", 60)
    for_b = signer.request(scenario, Prepare(), "clinic-b", 60)
    expired = signer.request(scenario, Prepare(), "clinic-a", -1)
    header, payload, signature = signer.request(scenario, Prepare(), "clinic-a", 60).token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["args"]["scenario"]["federation"]["local_steps"] = 1  # another job than the one signed
    changed = ".".join([header, _b64url(envelope.canonical(claims)), signature])
    reasons = {
        "forged": "signature is not the coordinator's",
        "for_b": "addressed to 'clinic-b'",
        "expired": "expired",
        "changed": "signature is not the coordinator's",
    }
    for name, token in {"forged": forged.token, "for_b": for_b.token, "expired": expired.token,
                        "changed": changed}.items():  # fmt: skip
        reply = envelope.verify(gate.serve(token, work), keys.roster.silo_key("clinic-a"), "clinic-a")
        assert reply["outcome"] == "refused" and reasons[name] in reply["reason"], (name, reply["reason"])
    assert work.calls == 0
    assert [r["decision"] for r in gate.audit.records] == ["refused"] * 4


def test_a_reply_signed_by_another_silo_for_another_request_or_unsigned_is_refused(keys):
    scenario, signer = load_scenario(SMOKE), signer_of(keys)
    first, second = (signer.request(scenario, Prepare(), "clinic-a", 60) for _ in range(2))
    for_b = signer.request(scenario, Prepare(), "clinic-b", 60)
    reply_a = local_gate(keys, "clinic-a").serve(first.token, Counting())
    reply_b = local_gate(keys, "clinic-b").serve(for_b.token, Counting())
    speaks_for_a = signer.accept(first, reply_b)
    assert speaks_for_a.outcome == "refused" and "not silo clinic-a's" in speaks_for_a.reason
    replayed = signer.accept(second, reply_a)
    assert replayed.outcome == "refused" and "another request" in replayed.reason
    unsigned = signer.accept(first, json.dumps({"silo": "clinic-a"}))
    assert unsigned.outcome == "refused"
    assert signer.accept(first, reply_a).outcome == "served"
    decisions = [r["decision"] for r in signer.audit.records]
    assert decisions == ["refused", "refused", "refused", "accepted"]


def test_a_silo_whose_policy_requires_secure_aggregation_declines_and_the_job_stops_at_quorum(tmp_path):
    strict = {"clinic-b": SiloPolicy.model_validate({"require": {"secure_aggregation": True}})}
    script = Scripted({"clinic-a": 0.01, "clinic-b": 0.02}, {"clinic-a": 30, "clinic-b": 30})
    with pytest.raises(FederationError) as failed:
        run(tmp_path, "federation.rounds=1", transport=InProcess(script, policies=strict))
    assert "clinic-b (policy rule require.secure_aggregation" in str(failed.value)
    assert ("clinic-b", "prepare") not in script.asked  # declined before it touched its data


def test_with_a_quorum_the_job_goes_on_without_the_declining_silo_and_names_its_rule(tmp_path):
    three = "silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]"
    strict = {"clinic-c": SiloPolicy.model_validate({"limits": {"max_rounds": 1}})}
    script = Scripted(dict.fromkeys(["clinic-a", "clinic-b", "clinic-c"], 0.01),
                      dict.fromkeys(["clinic-a", "clinic-b", "clinic-c"], 30))  # fmt: skip
    transport = InProcess(script, policies=strict)
    result, tracker = run(
        tmp_path, three, "federation.min_silos=2", "federation.rounds=2", transport=transport
    )
    assert result.rounds == 2 and len(result.curve) == 3
    tags = tracker.tags[None]
    assert (
        "limits.max_rounds" in tags["fedsilo.declined.round_2"]
        and "clinic-c" in tags["fedsilo.declined.round_2"]
    )


class Keeping(NullTracker):
    """No MLflow; keeps the files the job logs (its audit trail and roster)."""

    def __init__(self, folder):
        super().__init__()
        self.folder, self.kept = folder, {}

    def log_file(self, path, folder):
        target = self.folder / folder / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        self.kept[path.name] = target


def test_an_embedded_job_leaves_two_audit_chains_that_verify_and_a_changed_record_is_found(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("FEDSILO_WORKDIR", str(tmp_path / "jobs"))
    scenario = load_scenario(SMOKE, ["federation.rounds=1"])
    tracker = Keeping(tmp_path / "logged")
    script = Scripted({"clinic-a": 0.01, "clinic-b": 0.02}, {"clinic-a": 30, "clinic-b": 30})
    run_job(scenario, InProcess(script), tracker=tracker, job="audited")
    from fedsilo.trust.roster import load_roster

    roster = load_roster(tracker.kept["roster.yaml"])
    coordinator = verify_chain(tracker.kept["coordinator.jsonl"], roster)
    assert coordinator.ok, coordinator.problems
    steps = {(r["silo"], r["step"], r["decision"]) for r in coordinator.records}
    assert ("clinic-a", "fit-round-1", "accepted") in steps and ("clinic-b", "prepare", "accepted") in steps
    silo_chain = state_folder("clinic-a") / "audit.jsonl"
    assert verify_chain(silo_chain, roster).ok
    lines = silo_chain.read_text().splitlines()
    changed = json.loads(lines[1]) | {"decision": "declined"}
    silo_chain.write_text("\n".join([lines[0], json.dumps(changed), *lines[2:]]) + "\n")
    broken = verify_chain(silo_chain, roster)
    assert not broken.ok and broken.problems[0][0] == 2


def test_a_key_bundle_swapped_by_the_coordinator_is_caught_before_masking(keys):
    three = ephemeral(["clinic-a", "clinic-b", "clinic-c"])
    gates = {silo: local_gate(three, silo) for silo in three.silos}
    tokens = {}
    for silo, gate in gates.items():
        with gate.serving_silo():
            tokens[silo] = signed_bundle(silo, "ab" * 64, 1, "file:///job")
    with gates["clinic-a"].serving_silo():
        check_peer_keys("clinic-a", tokens, 1, "file:///job")  # the honest view passes
        own_key = envelope.sign(three.coordinator, envelope.peek(tokens["clinic-b"]))
        with pytest.raises(SecAggError, match="clinic-b"):
            check_peer_keys("clinic-a", tokens | {"clinic-b": own_key}, 1, "file:///job")
        with pytest.raises(SecAggError, match="another silo, round or job"):
            check_peer_keys("clinic-a", tokens, 2, "file:///job")  # last round's keys, replayed


def test_a_silo_claiming_more_examples_than_the_roster_pins_is_refused_at_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSILO_SILO_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("FEDSILO_WORKDIR", str(tmp_path / "jobs"))
    three = ["clinic-a", "clinic-b", "clinic-c"]
    scenario = load_scenario(SMOKE, ["silos=[{name: clinic-a}, {name: clinic-b}, {name: clinic-c}]",
                                     "federation.min_silos=2", "federation.rounds=1"])  # fmt: skip
    credentials = ephemeral(three)
    pinned = credentials.roster.silos["clinic-c"].model_copy(update={"max_examples": 100})
    credentials.roster = credentials.roster.model_copy(
        update={"silos": credentials.roster.silos | {"clinic-c": pinned}}
    )
    script = Scripted(dict.fromkeys(three, 0.01), {"clinic-a": 30, "clinic-b": 30, "clinic-c": 10**9})
    tracker = Keeping(tmp_path / "logged")
    run_job(scenario, InProcess(script), tracker=tracker, job="pinned", credentials=credentials)
    assert "roster pins at most 100" in tracker.tags["clinic-c"]["fedsilo.refused.round_0.prepare"]


def _b64(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_malformed_requests_are_refused_and_recorded_never_a_traceback(keys):
    gate, work = local_gate(keys, "clinic-a"), Counting()
    nested = "[" * 5000 + "]" * 5000
    tokens = [
        "junk",
        f"{_b64([])}.{_b64({})}.AAAA",  # a header that is not an object
        f"{_b64(5)}.{_b64([])}.AAAA",
        f"{base64.urlsafe_b64encode(nested.encode()).decode()}.{_b64({})}.AAAA",
        "a" * (5 * 1024 * 1024),  # a flood: refused unread
    ]
    for token in tokens:
        claims = envelope.verify(gate.serve(token, work), keys.roster.silo_key("clinic-a"), "clinic-a")
        assert claims["outcome"] == "refused"
    assert work.calls == 0 and len(gate.audit.records) == len(tokens)
    from pipelines.steps import StepRequest

    with pytest.raises(ValueError):  # a request id Prefect could not key a reply by is dropped unread
        StepRequest(request="Not/A-Key", token="x")


def test_a_silos_malformed_reply_or_unsigned_keys_are_refused_not_a_crash(keys):
    from fedsilo.messages import FitReport, WeightRef
    from fedsilo.steps import Fit
    from fedsilo.trust.claims import ReplyContent, reply_claims

    scenario, signer = load_scenario(SMOKE), signer_of(keys)
    sent = signer.request(scenario, Prepare(), "clinic-a", 60)
    claims = reply_claims("clinic-a", envelope.peek(sent.token), sent.token, ReplyContent("served"))
    deep = claims | {"body": "[" * 5000, "body_sha256": envelope.digest("[" * 5000)}
    verdict = signer.accept(sent, envelope.sign(keys.silos["clinic-a"], deep))
    assert verdict.outcome == "refused" and "cannot be read" in verdict.reason

    ref = WeightRef("file:///job/global-000.safetensors", "0" * 64, 1)
    gate = local_gate(keys, "clinic-a")
    for bundle in ("e30.W10.AAAA", "ab" * 64):  # a payload that is not an object; a plain, unsigned bundle
        report = FitReport("clinic-a", 1, None, 30, 0.1, None, 0.0, public_key=bundle)
        fresh = signer.request(scenario, Fit(1, ref, "file:///job"), "clinic-a", 60)
        verdict = signer.accept(fresh, gate.serve(fresh.token, lambda scenario, step, r=report: r))
        assert (
            verdict.outcome == "refused" and "secure-aggregation keys are not signed by it" in verdict.reason
        )


def test_a_secagg_threshold_below_a_majority_is_refused_everywhere():
    from fedsilo.errors import ScenarioError
    from fedsilo.privacy.secagg_shares import threshold_for

    four = "silos=[{name: a}, {name: b}, {name: c}, {name: d}]"
    with pytest.raises(ScenarioError, match="not a strict majority"):
        load_scenario(SMOKE, [four, "privacy.secure_aggregation=true", "privacy.secagg_threshold=2"])
    assert threshold_for(2, 4) == 3 and threshold_for(None, 3) == 2 and threshold_for(4, 4) == 4


def test_a_policy_with_max_rounds_declines_a_fit_of_a_round_outside_the_job(keys):
    from fedsilo.messages import WeightRef
    from fedsilo.steps import Fit

    policy = SiloPolicy.model_validate({"limits": {"max_rounds": 5}})
    scenario = load_scenario(SMOKE, ["federation.rounds=2"])
    ref = WeightRef("file:///job/global-000.safetensors", "0" * 64, 1)
    assert policy.violation(scenario, Fit(2, ref, "file:///job")) is None
    for asked in (0, 3, 10_000):
        assert "limits.max_rounds" in policy.violation(scenario, Fit(asked, ref, "file:///job"))


def test_a_silo_that_copies_anothers_key_is_the_one_left_out():
    from fedsilo.messages import FitReport
    from fedsilo.privacy.secure_aggregation import _distinct_keys

    def fit(silo, bundle):
        return FitReport(silo, 1, None, 30, 0.1, None, 0.0, public_key=bundle)

    fits = [fit("clinic-a", "ab" * 64), fit("clinic-b", "ab" * 64), fit("clinic-c", "cd" * 64)]
    left_out: dict[str, str] = {}
    kept = _distinct_keys(fits, left_out, ["clinic-b", "clinic-c", "clinic-a"])  # a copied b's, later
    assert sorted(f.silo for f in kept) == ["clinic-b", "clinic-c"] and list(left_out) == ["clinic-a"]


def test_keys_signed_for_another_round_or_job_are_refused_by_the_coordinator(keys):
    from fedsilo.messages import FitReport, WeightRef
    from fedsilo.steps import Fit

    scenario, signer, gate = load_scenario(SMOKE), signer_of(keys), local_gate(keys, "clinic-a")
    ref = WeightRef("file:///job/global-000.safetensors", "0" * 64, 1)
    for bundle_round, exchange, reply_round in (
        (1, "file:///job", 1),
        (8, "file:///job", 8),
        (1, "file:///other", 1),
    ):
        with gate.serving_silo():
            bundle = signed_bundle("clinic-a", "ab" * 64, bundle_round, exchange)
        report = FitReport("clinic-a", reply_round, None, 30, 0.1, None, 0.0, public_key=bundle)
        sent = signer.request(scenario, Fit(1, ref, "file:///job"), "clinic-a", 60)
        verdict = signer.accept(sent, gate.serve(sent.token, lambda scenario, step, r=report: r))
        honest = (bundle_round, exchange) == (1, "file:///job")
        assert (verdict.outcome == "served") == honest, verdict.reason
        assert honest or "another silo, round or job" in verdict.reason


def test_a_worker_serves_only_its_own_silo(monkeypatch):
    from fedsilo.errors import FederationError
    from pipelines.silo_flow import SILO_ENV, silo_job

    monkeypatch.setenv(SILO_ENV, "clinic-a")
    with pytest.raises(FederationError, match="serves silo clinic-a"):
        silo_job.fn(load_scenario(SMOKE), "clinic-b", "00000000-0000-0000-0000-000000000000")
