"""Aggregation: the strategy behind the checks every update passes, and the base privacy wraps.

The round loop calls one `Aggregation` (the outermost wrapper) and never branches on privacy:

    configure_fit(r)          settings every silo's fit receives (the strategy's, plus a wrapper's)
    fit_reply_problem(reply)  why a fit reply cannot take part, or None
    aggregate(ctx, w, fits)   the next global model from the round's fit replies; a wrapper may ask
                              silos an extra step through `ctx.ask` (secure aggregation's mask)
    account(r, fits)          the privacy a round spent: job figures and per-silo figures
    statement(rounds)         the guarantee, in words, once the job ends

`Aggregation` itself reads each update once, checks it (fedsilo.validation) and hands the sound
ones to the strategy. A `Wrapper` (fedsilo/privacy/*) delegates everything to the aggregation it
wraps and overrides what its mechanism changes: secure aggregation and central DP the sum, DP-SGD
the accounting. Strategy state (momentum, moments) is the wrapped strategy's.
"""

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedsilo import transfer
from fedsilo.engine import influence
from fedsilo.errors import ChecksumError, UpdateRefused
from fedsilo.messages import DataSummary, FitReport, WeightRef
from fedsilo.paths import JobPaths
from fedsilo.personal import with_global_values
from fedsilo.scenario import Scenario
from fedsilo.strategies import SiloUpdate, Strategy
from fedsilo.validation import Layout, check_update
from fedsilo.weights import State, read_state, write_state

T = TypeVar("T")


class UpdateChanged(Exception):
    """Internal to one aggregation: a checked update's file changed before it was summed."""

    def __init__(self, silo: str, reason: str):
        super().__init__(reason)
        self.silo = silo


Aggregated = tuple[WeightRef | None, dict[str, str], list[WeightRef]]  # new model, refused, received
Combine = Callable[[State, Iterator[SiloUpdate]], State]


@dataclass(frozen=True)
class UpdateRules:
    """What the coordinator holds each silo's update to (see fedsilo.validation)."""

    trained_on: dict[str, int]  # each silo's training count, from its data summary
    max_norm: float | None = None
    transfer_dtype: str = "float32"  # 16 bits: updates arrive as changes from the global model
    weight_cap: int | None = None  # the most FedAvg weight one silo carries (fedsilo.engine.influence)
    personal: tuple[str, ...] = ()  # federation.personal_layers: their values in any update are ignored

    @classmethod
    def of(cls, scenario: Scenario, summaries: list[DataSummary]) -> "UpdateRules":
        federation, trained_on = scenario.federation, {s.silo: s.num_train for s in summaries}
        cap = influence.weight_cap(list(trained_on.values()))
        return cls(
            trained_on,
            federation.max_update_norm,
            federation.transfer_dtype,
            cap,
            tuple(federation.personal_layers),
        )

    def weight(self, silo: str, claimed: int) -> int:
        """A silo's FedAvg weight: what it claims, within what it reported and the cap."""
        return min(claimed, self.weight_cap) if self.weight_cap is not None else claimed


@dataclass
class RoundContext:
    """What a round lends its aggregation: where files go, and how to ask silos and run work."""

    round_index: int
    paths: JobPaths
    ask: Callable  # (step, silos) -> screening.Outcome
    phase: Callable[[str, Callable[[], Any]], Any]  # named coordinator work (a Prefect task)
    ledger: Any  # fedsilo.engine.ledger.WeightLedger
    check_quorum: Callable[[list[str], str], None]
    log: logging.Logger | logging.LoggerAdapter
    clipped: dict[str, float | None] = field(default_factory=dict)  # silo -> its clipped norm (None: hidden)
    unsound: str = ""  # why no sound aggregate came of updates that passed their checks
    arrived: list[str] = field(default_factory=list)  # the order the fit replies came in


class Aggregation:
    """Checked updates in, the strategy's next global model out."""

    def __init__(self, strategy: Strategy, rules: UpdateRules):
        self.strategy, self.rules = strategy, rules
        self.last_bound: float | None = None  # for a round that sees too few updates for a median

    def configure_fit(self, round_index: int) -> dict[str, float]:
        return self.strategy.configure_fit(round_index)

    def fit_reply_problem(self, reply: FitReport, expects_update: bool = True) -> str | None:
        if expects_update and reply.update is None:
            return "sent no update"
        if reply.local is None:
            return "sent no evaluation of its local model"
        return None

    def weight_of(self, silos: list[str]) -> int:
        """The most the given silos' FedAvg weights can add up to."""
        return sum(self.rules.weight(s, self.rules.trained_on.get(s, 0)) for s in silos)

    def aggregate(
        self, ctx: RoundContext, current: WeightRef, replies: list[FitReport], combine: Combine | None = None
    ) -> Aggregated:
        out_uri = ctx.paths.global_uri(ctx.round_index)
        combine = combine or self.strategy.aggregate

        def run() -> tuple[WeightRef | None, dict[str, str]]:
            refused: dict[str, str] = {}
            global_state = read_state(current)
            norms = self.screened_norms(global_state, replies, refused)
            bound = influence.norm_bound(list(norms.values())) or self.last_bound
            self.last_bound = bound
            ctx.clipped.update({silo: norm for silo, norm in norms.items() if bound and norm > bound})
            sound = [r for r in replies if r.silo in norms]
            while sound:
                try:
                    state = combine(global_state, self.bounded_updates(global_state, sound, norms, bound))
                    state = with_global_values(state, global_state, self.rules.personal)  # exactly
                    return write_state(state, out_uri), refused
                except UpdateChanged as exc:  # its file changed after it was checked: refuse, sum again
                    refused[exc.silo] = str(exc)
                    sound = [r for r in sound if r.silo != exc.silo]
            return None, refused

        new, refused = ctx.phase(f"aggregate-round-{ctx.round_index}", run)
        return new, refused, [r.update for r in replies if r.silo not in refused]

    def screened_norms(
        self, global_state: State, replies: list[FitReport], refused: dict[str, str]
    ) -> dict[str, float]:
        """Each reply's update read, verified and checked once; its norm by silo when it passes,
        the reason in `refused` when it fails."""
        layout, norms = Layout.of(global_state), {}
        for reply in replies:
            if reply.silo not in self.rules.trained_on:
                refused[reply.silo] = (
                    "it did not describe its data at prepare, so its count cannot be checked"
                )
                continue
            try:
                state = self._read(reply, global_state)
                trained_on = self.rules.trained_on.get(reply.silo)
                norms[reply.silo] = check_update(
                    state, reply.num_examples, global_state, layout, trained_on, self.rules.max_norm
                )
            except (ChecksumError, UpdateRefused) as exc:
                refused[reply.silo] = str(exc)
            except Exception as exc:  # bytes that are not a safetensors file, a store error
                refused[reply.silo] = f"unreadable update at {reply.update.uri}: {exc}"
        return norms

    def bounded_updates(
        self, global_state: State, replies: list[FitReport], norms: dict[str, float], bound: float | None
    ) -> Iterator[SiloUpdate]:
        """The checked updates read again one at a time, each clipped to `bound` and weighted
        within the cap; raises UpdateChanged when a file no longer is what was checked."""
        for reply in replies:
            try:
                state = self._read(reply, global_state)
            except Exception as exc:
                raise UpdateChanged(reply.silo, f"its update changed after it was checked: {exc}") from None
            norm = norms[reply.silo]
            state, scale = influence.clipped(state, global_state, norm, bound), influence.scale(norm, bound)
            yield SiloUpdate(reply.silo, state, self.rules.weight(reply.silo, reply.num_examples), scale)

    def _read(self, reply: FitReport, global_state: State) -> State:
        """A silo's update as full tensors; personal layers keep the global values, whatever it sent."""
        state = transfer.from_wire(read_state(reply.update), global_state, self.rules.transfer_dtype)
        return with_global_values(state, global_state, self.rules.personal)

    def step_from_sum(self, current: State, average: State, delta_sum: State, total_weight: int) -> State:
        """The strategy's step from sum_k w_k delta_k over `total_weight` (what masking and central
        DP reveal). Integer tensors keep `average`'s values."""
        average = dict(average)
        for name, value in delta_sum.items():
            average[name] = (current[name].double() + value / total_weight).to(current[name].dtype)
        return self.strategy.apply(current, average)

    def account(self, round_index: int, replies: list[FitReport]) -> tuple[dict[str, float], dict[str, dict]]:
        """The privacy this round spent: figures for the job and per silo (none without privacy)."""
        return {}, {}

    def statement(self, rounds: int) -> str:
        """What the privacy mechanisms guaranteed over `rounds`, in words (empty: none)."""
        return ""

    def state_dict(self) -> State:  # the strategy's, and the last norm bound (kept across a resume)
        return self.strategy.state_dict() | influence.bound_state("fedsilo/norm_bound", self.last_bound)

    def load_state_dict(self, state: State) -> None:
        self.last_bound, state = influence.bound_from("fedsilo/norm_bound", state)
        self.strategy.load_state_dict(state)
