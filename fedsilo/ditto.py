"""Ditto at the silo (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization"): beside its federated work, each silo trains a personal model v every round,

    v <- v - lr (grad F_i(v) + lambda (v - w)),

w being the global model it received that round, for as many steps as its federated fit. v starts
from the first global model, never leaves the silo (kept per round in its private folder, so a
retried round starts from the same v) and is the silo's personalized candidate in its keep step.
With lambda = 0 it is the silo's own rows alone; the larger lambda, the closer to the global model.
"""

from dataclasses import replace

from fedsilo.modeling import load_shared, shared_state
from fedsilo.silo_store import RoundStore
from fedsilo.training import Progress, fit
from fedsilo.weights import State

SEED_KEY = 2_000_003  # seeds the personal model's batches apart from the federated fit's


class PersonalModel:
    """One silo's Ditto model across a job's rounds."""

    def __init__(self, silo: str):
        self.rounds = RoundStore(silo, "ditto")

    def train(
        self, member, job: str, round_index: int, global_state: State, progress: Progress | None
    ) -> None:
        """One round of Ditto's personal steps from the silo's v (the global model at first)."""
        load_shared(member.model, global_state)
        anchor = {name: p.detach().clone() for name, p in member.model.named_parameters() if p.requires_grad}
        load_shared(member.model, self.rounds.latest(job, before_round=round_index) or global_state)
        steps = member.scenario.federation.local_steps
        settings = member.on_course(member.settings(SEED_KEY + round_index, steps), round_index)
        settings = replace(settings, proximal_mu=member.scenario.evaluation.ditto_lambda, anchor=anchor)
        fit(member.model, member.train, settings, progress)
        self.rounds.remember(job, round_index, shared_state(member.model))

    def latest(self, job: str, before_round: int | None = None) -> State | None:
        """The silo's personal model after its latest round of `job` (before `before_round`), or None."""
        return self.rounds.latest(job, before_round)
