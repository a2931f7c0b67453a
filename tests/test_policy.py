"""The silo's policy file: each rule allows and declines, on real scenarios and steps, and a policy
file with a mistake is an error naming the file and the field."""

import pytest

from fedsilo.errors import TrustError
from fedsilo.messages import WeightRef
from fedsilo.paths import JobPaths
from fedsilo.privacy.secagg_steps import Mask
from fedsilo.scenario import Scenario, load_scenario
from fedsilo.steps import Evaluate, Fit, Keep, Prepare, Score, Step
from fedsilo.trust.policy import SiloPolicy, load_policy
from tests.conftest import REPO

FOLDER = "/shared/jobs/job-1"
PATHS = JobPaths(FOLDER)


def scenario(*overrides: str) -> Scenario:
    """scenarios/smoke.yaml with `--set` style overrides."""
    return load_scenario(REPO / "scenarios" / "smoke.yaml", list(overrides))


def ref(uri: str) -> WeightRef:
    return WeightRef(uri, "0" * 64, 1)


def steps() -> list[Step]:
    """One step of every built-in kind, and secure aggregation's mask step (a kind the policy
    has no step rule for)."""
    weights = ref(PATHS.global_uri(1))
    return [
        Prepare(),
        Fit(1, ref(PATHS.global_uri(0)), FOLDER, {"proximal_mu": 0.0}),
        Evaluate(weights, "round-1", FOLDER),
        Score({"clinic-a": ref(PATHS.local_uri(1, "clinic-a"))}, "silos", FOLDER),
        Keep(weights, 50, 2, FOLDER),
        Mask(1, "digest", {}, FOLDER),
    ]


def policy(**sections) -> SiloPolicy:
    return SiloPolicy.model_validate(sections)


def test_the_empty_policy_allows_everything():
    foreign = Score({"x": ref("s3://elsewhere/crafted.safetensors")}, "probe", "")
    for step in [*steps(), foreign]:
        assert SiloPolicy().violation(scenario(), step) is None
    assert SiloPolicy().describe() == []


@pytest.mark.parametrize(
    ("sections", "allowed", "declined", "rule"),
    [
        ({"join": {"scenarios": ["smo*"]}}, [], ["name=other"], "join.scenarios"),
        (
            {"join": {"experiments": ["fedsilo-*"]}},
            ["tracking.experiment=fedsilo-smoke"],
            ["tracking.experiment=elsewhere"],
            "join.experiments",
        ),
        ({"models": {"sources": ["tiny-*", "*MiniLM*"]}}, [], ["model.source=bert-base"], "models.sources"),
        (
            {"require": {"secure_aggregation": True}},
            ["privacy.secure_aggregation=true"],
            [],
            "require.secure_aggregation",
        ),
        ({"require": {"dp": True}}, ["privacy.dp.noise_multiplier=1.0"], [], "require.dp"),
        (
            {"require": {"dp": {"max_epsilon": 8.0}}},
            ["privacy.dp.target_epsilon=8"],
            ["privacy.dp.target_epsilon=9"],
            "require.dp.max_epsilon",
        ),
        (
            {"require": {"dp": {"max_delta": 1e-5}}},
            ["privacy.dp.noise_multiplier=1.0"],
            ["privacy.dp.noise_multiplier=1.0", "privacy.dp.delta=1e-4"],
            "require.dp.max_delta",
        ),
        ({"limits": {"max_rounds": 2}}, [], ["federation.rounds=3"], "limits.max_rounds"),
        (
            {"limits": {"max_local_steps": 500}},
            ["federation.local_steps=500"],
            ["federation.local_steps=501"],
            "limits.max_local_steps",
        ),
    ],
)
def test_each_job_rule_allows_and_declines_on_every_step(sections, allowed, declined, rule):
    rules, fits, breaks = policy(**sections), scenario(*allowed), scenario(*declined)
    for step in steps():
        assert rules.violation(fits, step) is None
        found = rules.violation(breaks, step)
        assert found is not None and found.startswith(f"policy rule {rule}: ")


def test_a_decline_says_what_the_job_lacks():
    found = policy(require={"secure_aggregation": True}).violation(scenario(), Prepare())
    assert found == (
        "policy rule require.secure_aggregation: this silo joins only jobs with "
        "privacy.secure_aggregation on; job scenario 'smoke' has it off"
    )


def test_an_epsilon_bound_declines_dp_without_a_target():
    rules = policy(require={"dp": {"max_epsilon": 8.0}})
    found = rules.violation(scenario("privacy.dp.noise_multiplier=1.0"), Prepare())
    assert "require.dp.max_epsilon" in found and "does not bound epsilon up front" in found


def test_a_step_bound_declines_jobs_counted_in_epochs():
    rules = policy(limits={"max_local_steps": 500})
    found = rules.violation(scenario("federation.local_epochs=1"), Prepare())
    assert "set federation.local_steps" in found and "not bounded up front" in found


def test_personalize_rules_apply_to_the_steps_that_personalize_only():
    job, personalize = scenario(), Keep(ref(PATHS.global_uri(2)), 50, 2, FOLDER)
    others = [step for step in steps() if not isinstance(step, Keep)]
    for rules, rule in [
        (policy(personalize=False), "personalize"),
        (policy(limits={"max_personalize_steps": 49}), "limits.max_personalize_steps"),
    ]:
        assert rules.violation(job, personalize).startswith(f"policy rule {rule}:")
        assert all(rules.violation(job, step) is None for step in others)
    assert policy(limits={"max_personalize_steps": 50}).violation(job, personalize) is None
    assert policy(personalize=False).violation(job, Keep(ref(PATHS.global_uri(2)), 0, 2, FOLDER)) is None


def test_under_ditto_every_fit_personalizes_and_the_rules_say_so():
    fit = Fit(1, ref(PATHS.global_uri(0)), FOLDER)
    ditto = scenario("evaluation.personalization=ditto", "federation.local_steps=60")
    assert "set evaluation.personalization to finetune" in policy(personalize=False).violation(ditto, fit)
    limited = policy(limits={"max_personalize_steps": 50})
    assert "limits.max_personalize_steps" in limited.violation(ditto, fit)
    by_epochs = scenario("evaluation.personalization=ditto")
    assert "set federation.local_steps" in limited.violation(by_epochs, fit)
    assert policy(limits={"max_personalize_steps": 60}).violation(ditto, fit) is None


def test_scoring_only_this_jobs_models():
    rules, job = policy(score_other_models=False), scenario()
    assert all(rules.violation(job, step) is None for step in steps())
    outside = "/shared/jobs/job-2/global-001.safetensors"
    mixed = {"clinic-a": ref(PATHS.local_uri(1, "clinic-a")), "other": ref(outside)}
    found = rules.violation(job, Score(mixed, "silos", FOLDER))
    assert found == (
        f"policy rule score_other_models: this silo scores only this job's models (under {FOLDER}); "
        f"{outside} is not one"
    )
    assert rules.violation(job, Evaluate(ref(PATHS.global_uri(1)), "round-1", "")) is not None


def test_a_policy_file_loads_and_describes_its_rules(tmp_path):
    file = tmp_path / "policy.yaml"
    file.write_text(
        "join:\n  scenarios: ['medical*']\n  experiments:\nmodels:\n  sources: [cnn, '*MiniLM*']\n"
        "require:\n  secure_aggregation: true\n  dp: {max_epsilon: 8.0, max_delta: 1.0e-5}\n"
        "limits: {max_rounds: 20, max_local_steps: 500, max_personalize_steps: 200}\n"
        "score_other_models: false\npersonalize: true\n"
    )
    rules = load_policy(file)
    assert rules.join.experiments == [] and rules.limits.max_rounds == 20
    assert [line.split(":")[0] for line in rules.describe()] == [
        "join.scenarios",
        "models.sources",
        "require.secure_aggregation",
        "require.dp",
        "limits.max_rounds",
        "limits.max_local_steps",
        "limits.max_personalize_steps",
        "score_other_models",
    ]
    assert "target_epsilon <= 8" in rules.describe()[3]


def test_an_empty_policy_file_allows_everything(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_policy(tmp_path / "empty.yaml") == SiloPolicy()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("limits:\n  max_round: 20\n", ["limits.max_round", "unknown key"]),
        ("require:\n  dp: {max_epsilon: -1}\n", ["require.dp.max_epsilon", "greater than 0"]),
        ("join:\n  scenarios: [a\n", ["not a readable policy file"]),
        ("- join\n", ["a mapping of sections"]),
    ],
)
def test_a_bad_policy_file_names_the_file_and_the_field(tmp_path, text, names):
    file = tmp_path / "silo-policy.yaml"
    file.write_text(text)
    with pytest.raises(TrustError) as caught:
        load_policy(file)
    assert str(file) in str(caught.value)
    assert all(name in str(caught.value) for name in names)


def test_a_missing_policy_file_is_an_error(tmp_path):
    with pytest.raises(TrustError, match="no policy file there"):
        load_policy(tmp_path / "absent.yaml")


def test_a_silo_that_does_not_personalize_declines_a_keep_step_that_would():
    from fedsilo.steps import Keep

    policy = SiloPolicy.model_validate({"personalize": False})
    ref = WeightRef("file:///job/global-002.safetensors", "0" * 64, 1)
    assert policy.violation(scenario(), Keep(ref, 0, 2)) is None
    assert "policy rule personalize" in policy.violation(scenario(), Keep(ref, 5, 2))
    capped = SiloPolicy.model_validate({"limits": {"max_personalize_steps": 3}})
    assert "limits.max_personalize_steps" in capped.violation(scenario(), Keep(ref, 5, 2))
