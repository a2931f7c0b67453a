"""A silo's own policy: what may run on its data (`fedsilo worker --policy FILE`).

The silo's operator writes it; the silo's gate asks `SiloPolicy.violation(scenario, step)` before
every step whose signature has passed, and a non-None answer is a decline naming the rule. Every
section is optional and an empty file allows everything, as running without a policy does:

    join:
      scenarios: ["medical*"]        # fnmatch patterns on the scenario's name; empty: any
      experiments: ["fedsilo-*"]     # patterns on the MLflow experiment it logs to
    models:
      sources: ["cnn", "*MiniLM*"]   # patterns on model.source, the weights it starts from
    require:
      secure_aggregation: true       # only jobs with privacy.secure_aggregation on
      dp:                            # only jobs with DP-SGD (privacy.dp); `dp: true` sets no bound
        max_epsilon: 8.0             # privacy.dp.target_epsilon at most this (and set)
        max_delta: 1.0e-5            # privacy.dp.delta at most this
    limits:
      max_rounds: 20                 # federation.rounds
      max_local_steps: 500           # optimizer steps per fit: needs federation.local_steps
      max_personalize_steps: 200     # evaluation.personalize_steps (Ditto: local_steps)
    score_other_models: false        # evaluate and score only this job's models (default true)
    personalize: false               # decline personalized models: fine-tuning, Ditto (default true)

Job rules (join, models, require, limits.max_rounds, limits.max_local_steps) depend on the scenario
alone, so they are checked on every step, Prepare included: a silo declines before it loads its
data, and unknown step kinds (secure aggregation's, extensions') get them too. Step rules
(score_other_models, personalize, limits.max_personalize_steps) are checked on their own steps.

Local steps: a fit takes `federation.local_steps` optimizer steps, or `local_epochs` passes of
ceil(rows / batch_size) steps each. A pass's count depends on the silo's rows, which are not known
when the job is joined, so `max_local_steps` accepts only scenarios that fix local_steps. A Fit's
`config` cannot change the count: the silo reads only the strategy's `proximal_mu` from it.
"""

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedsilo.errors import TrustError
from fedsilo.scenario import Scenario
from fedsilo.steps import Evaluate, Fit, Keep, Score, Step


class Section(BaseModel):
    """A policy section: unknown keys are errors (a typo never loosens a rule), and a key left
    empty in YAML (`scenarios:`) takes its default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class JoinRules(Section):
    scenarios: list[str] = Field(default_factory=list, description="patterns on scenario.name")
    experiments: list[str] = Field(default_factory=list, description="patterns on the MLflow experiment")


class ModelRules(Section):
    sources: list[str] = Field(default_factory=list, description="patterns on model.source")


class DPRequirement(Section):
    max_epsilon: float | None = Field(None, gt=0, description="largest privacy.dp.target_epsilon")
    max_delta: float | None = Field(None, gt=0, lt=1, description="largest privacy.dp.delta")


class Requirements(Section):
    secure_aggregation: bool = False
    dp: DPRequirement | None = None

    @field_validator("dp", mode="before")
    @classmethod
    def _dp_switch(cls, value: Any) -> Any:
        """`dp: true` requires DP-SGD with no bound; `dp: false` requires nothing."""
        if value is True:
            return {}
        return None if value is False else value


class Limits(Section):
    max_rounds: int | None = Field(None, ge=1)
    max_local_steps: int | None = Field(None, ge=1)
    max_personalize_steps: int | None = Field(None, ge=0)


def _patterns(patterns: list[str]) -> str:
    return ", ".join(repr(p) for p in patterns)


def _matches(value: str, patterns: list[str]) -> bool:
    """Whether `value` matches a pattern (case-sensitive on every OS); an empty list allows any value."""
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


def _broken(rule: str, message: str) -> str:
    return f"policy rule {rule}: {message}"


class SiloPolicy(Section):
    """What a silo runs on its data; the defaults allow everything."""

    join: JoinRules = Field(default_factory=JoinRules)
    models: ModelRules = Field(default_factory=ModelRules)
    require: Requirements = Field(default_factory=Requirements)
    limits: Limits = Field(default_factory=Limits)
    score_other_models: bool = True
    personalize: bool = True

    def violation(self, scenario: Scenario, step: Step) -> str | None:
        """None when the policy allows `step` of the job `scenario` describes, else one line naming
        the first rule it breaks and what would have to change."""
        checks = (self._join, self._model, self._require, self._dp, self._limits)
        for check in checks:
            found = check(scenario)
            if found:
                return found
        return self._step(scenario, step)

    def _join(self, scenario: Scenario) -> str | None:
        job, rules = f"job scenario {scenario.name!r}", self.join
        if not _matches(scenario.name, rules.scenarios):
            return _broken(
                "join.scenarios",
                f"this silo joins only scenarios named {_patterns(rules.scenarios)}; {job} matches none",
            )
        if not _matches(scenario.experiment_name, rules.experiments):
            return _broken(
                "join.experiments",
                f"this silo joins only jobs logging to MLflow experiments {_patterns(rules.experiments)}; "
                f"{job} logs to {scenario.experiment_name!r} (tracking.experiment)",
            )
        return None

    def _model(self, scenario: Scenario) -> str | None:
        source = scenario.model.source
        if not _matches(source, self.models.sources):
            return _broken(
                "models.sources",
                f"this silo trains only models from sources {_patterns(self.models.sources)}; "
                f"job scenario {scenario.name!r} loads model.source {source!r}",
            )
        return None

    def _require(self, scenario: Scenario) -> str | None:
        job = f"job scenario {scenario.name!r}"
        if self.require.secure_aggregation and not scenario.privacy.secure_aggregation:
            return _broken(
                "require.secure_aggregation",
                f"this silo joins only jobs with privacy.secure_aggregation on; {job} has it off",
            )
        if self.require.dp is not None and scenario.privacy.dp is None:
            return _broken(
                "require.dp", f"this silo joins only jobs with privacy.dp (DP-SGD) on; {job} has it off"
            )
        return None

    def _dp(self, scenario: Scenario) -> str | None:
        """The bounds of `require.dp` on a scenario that has DP-SGD on."""
        wanted, dp, job = self.require.dp, scenario.privacy.dp, f"job scenario {scenario.name!r}"
        if wanted is None or dp is None:
            return None
        if wanted.max_epsilon is not None and (dp.target_epsilon or float("inf")) > wanted.max_epsilon:
            given = (
                f"sets {dp.target_epsilon:g}"
                if dp.target_epsilon
                else "sets none (a noise_multiplier alone does not bound epsilon up front)"
            )
            return _broken(
                "require.dp.max_epsilon",
                f"this silo joins only jobs with privacy.dp.target_epsilon at most {wanted.max_epsilon:g}; "
                f"{job} {given}",
            )
        if wanted.max_delta is not None and dp.delta > wanted.max_delta:
            return _broken(
                "require.dp.max_delta",
                f"this silo joins only jobs with privacy.dp.delta at most {wanted.max_delta:g}; "
                f"{job} sets {dp.delta:g}",
            )
        return None

    def _limits(self, scenario: Scenario) -> str | None:
        limits, federation, job = self.limits, scenario.federation, f"job scenario {scenario.name!r}"
        if limits.max_rounds is not None and federation.rounds > limits.max_rounds:
            return _broken(
                "limits.max_rounds",
                f"this silo trains at most {limits.max_rounds} rounds per job; "
                f"{job} sets federation.rounds {federation.rounds}",
            )
        if limits.max_local_steps is None:
            return None
        if federation.local_steps is None:
            return _broken(
                "limits.max_local_steps",
                f"this silo takes at most {limits.max_local_steps} optimizer steps per fit, so the job must "
                f"set federation.local_steps; {job} trains in local epochs, whose step count depends on "
                "the silo's rows and is not bounded up front",
            )
        if federation.local_steps > limits.max_local_steps:
            return _broken(
                "limits.max_local_steps",
                f"this silo takes at most {limits.max_local_steps} optimizer steps per fit; "
                f"{job} sets federation.local_steps {federation.local_steps}",
            )
        return None

    def _step(self, scenario: Scenario, step: Step) -> str | None:
        """The rules on one kind of step; other kinds have none."""
        if isinstance(step, Keep) and step.personalize_steps:  # it fine-tunes a personalized candidate
            return self._personalize(step.personalize_steps)
        if isinstance(step, Fit):
            return self._ditto(scenario) or self._fit_round(scenario, step)
        if isinstance(step, Evaluate | Score) and not self.score_other_models:
            return self._only_job_models(scenario, step)
        return None

    def _ditto(self, scenario: Scenario) -> str | None:
        """Under evaluation.personalization ditto every fit also trains a personal model, for as
        many steps as the fit: the personalize rules apply to it."""
        if scenario.evaluation.personalization != "ditto":
            return None
        steps = scenario.federation.local_steps
        if steps is None and self.personalize and self.limits.max_personalize_steps is not None:
            return _broken(
                "limits.max_personalize_steps",
                "Ditto's personal model trains as many steps as each fit; set federation.local_steps so "
                "they are bounded up front",
            )
        return self._personalize(steps or 0, "set evaluation.personalization to finetune")

    def _fit_round(self, scenario: Scenario, step: Fit) -> str | None:
        """A fit's round must be one of the job's: 1 to its rounds (within limits.max_rounds)."""
        if self.limits.max_rounds is None:
            return None
        last = min(scenario.federation.rounds, self.limits.max_rounds or scenario.federation.rounds)
        if not 1 <= step.round_index <= last:
            return _broken(
                "limits.max_rounds",
                f"this silo fits rounds 1 to {last} of a job; the step asks round {step.round_index}",
            )
        return None

    def _personalize(self, steps: int, remedy: str = "set evaluation.personalize_steps to 0") -> str | None:
        if not self.personalize:
            return _broken("personalize", f"this silo does not personalize models; {remedy}")
        limit = self.limits.max_personalize_steps
        if limit is not None and steps > limit:
            return _broken(
                "limits.max_personalize_steps",
                f"this silo personalizes for at most {limit} steps; the step asks {steps} "
                "(evaluation.personalize_steps)",
            )
        return None

    def _only_job_models(self, scenario: Scenario, step: Evaluate | Score) -> str | None:
        """Decline to score weights outside the job folder the step names: a silo that scores any
        weights a caller names lets its test split be probed with crafted models."""
        from fedsilo.silo_steps import job_models  # the silo side: torch, imported where it runs

        refs = [step.weights] if isinstance(step, Evaluate) else list(step.models.values())
        models = job_models(scenario, step.exchange) if step.exchange else set()
        for ref in refs:
            if ref.uri not in models:
                return _broken(
                    "score_other_models",
                    f"this silo scores only this job's models (under {step.exchange or 'the job folder'}); "
                    f"{ref.uri} is not one",
                )
        return None

    def describe(self) -> list[str]:
        """One line per active rule, for the worker's start-up log; empty when everything is allowed."""
        join, sources = self.join, self.models.sources
        before = [
            (join.scenarios, f"join.scenarios: only scenarios named {_patterns(join.scenarios)}"),
            (join.experiments, f"join.experiments: only jobs logging to {_patterns(join.experiments)}"),
            (sources, f"models.sources: only model sources {_patterns(sources)}"),
            (self.require.secure_aggregation, "require.secure_aggregation: only jobs with it on"),
        ]
        after = [
            (not self.score_other_models, "score_other_models: false: scores only this job's models"),
            (not self.personalize, "personalize: false: declines personalize steps"),
        ]
        return (
            [line for active, line in before if active]
            + self._describe_dp()
            + self._describe_limits()
            + [line for active, line in after if active]
        )

    def _describe_dp(self) -> list[str]:
        wanted = self.require.dp
        if wanted is None:
            return []
        bounds = []
        if wanted.max_epsilon is not None:
            bounds.append(f"target_epsilon <= {wanted.max_epsilon:g}")
        if wanted.max_delta is not None:
            bounds.append(f"delta <= {wanted.max_delta:g}")
        return ["require.dp: only jobs with DP-SGD" + (f" ({', '.join(bounds)})" if bounds else "")]

    def _describe_limits(self) -> list[str]:
        limits = self.limits
        lines = {
            "max_rounds": f"at most {limits.max_rounds} rounds per job",
            "max_local_steps": f"at most {limits.max_local_steps} optimizer steps per fit "
            "(jobs must set federation.local_steps)",
            "max_personalize_steps": f"at most {limits.max_personalize_steps} personalization steps",
        }
        return [f"limits.{key}: {text}" for key, text in lines.items() if getattr(limits, key) is not None]


def _problem(error: dict[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key; remove it or check its spelling"
    return f"{path}: {error['msg'].removeprefix('Value error, ')} (got {error.get('input')!r})"


def load_policy(path: str | Path) -> SiloPolicy:
    """The policy in the YAML file at `path`; TrustError naming the file and each field's problem.
    An empty file is the empty policy, which allows everything."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrustError(
            f"{file}: no policy file there; write one or start the worker without --policy"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TrustError(f"{file}: not a readable policy file: {exc}") from None
    if raw is None:
        return SiloPolicy()
    if not isinstance(raw, dict):
        raise TrustError(f"{file}: a policy file holds a mapping of sections (join, models, require, limits)")
    try:
        return SiloPolicy.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(e) for e in exc.errors(include_url=False)]
        raise TrustError(f"{file}: not a valid policy: " + "; ".join(problems)) from None


__all__ = ["SiloPolicy", "load_policy"]
