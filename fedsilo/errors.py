"""fedsilo's one exception tree; the CLI maps each branch to an exit code (see `exit_code`).

    FedsiloError                      anything fedsilo raises on purpose; its message says what to do
    ├── ScenarioError                 a scenario file or override is invalid (exit 2)
    ├── UnknownKind                   a name outside a closed registry (step, data source, model,
    │                                 strategy); also a ScenarioError's sibling, exit 2
    ├── DataError                     a silo's data cannot be read or split (exit 1)
    ├── ModelSourceError              a model checkpoint cannot be loaded (exit 1)
    ├── FederationError               the job cannot go on, e.g. too few silos answered (exit 1)
    │   └── JobNotFound               `--resume` names a job MLflow does not hold
    ├── RegistryUnavailable           the MLflow registry or artifact store could not be read;
    │                                 never taken as "no champion"
    ├── ReplyRefused                  the coordinator refuses one silo's reply (its update, masked
    │   │                             vector or evaluation); that silo is left out, the job goes on
    │   ├── UpdateRefused             an update fails its layout, value or norm checks
    │   └── ChecksumError             weights whose sha256 differs from the one announced
    ├── SiloDeclined                  a silo declines a step under its own rules (its policy, its
    │   │                             privacy budget)
    │   ├── PolicyViolation           the step breaks a rule of the silo's policy file
    │   └── PrivacyBudgetExhausted
    ├── TrustError                    keys, roster or signatures: who is speaking cannot be established
    │   └── SignatureError            a signed request or reply fails its check (signature, address,
    │                                 expiry, replay); the message names which
    └── StepFailed                    a silo cannot do a step it was asked (e.g. nothing kept to mask);
                                      the transport reports it absent

One vocabulary for a silo that is not counted in a step, used in logs, tags, metrics and events:
**absent** (did not answer), **declined** (said no, under its own policy or budget) and
**refused** (answered, but the coordinator refused the reply).
"""

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class FedsiloError(Exception):
    """The root of every error fedsilo raises on purpose."""


class ScenarioError(FedsiloError):
    """A scenario that cannot be used; `problems` lists each one with its field path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def report(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        return "\n".join(lines + [f"  - {p}" for p in self.problems])


class UnknownKind(FedsiloError):
    """A name that a closed registry does not hold; the message lists the accepted names."""

    def __init__(self, what: str, name: object, accepted: list[str] | tuple[str, ...]):
        self.what, self.name, self.accepted = what, name, sorted(accepted)
        super().__init__(f"unknown {what} {name!r}; accepted: {', '.join(self.accepted)}")


class DataError(FedsiloError):
    """A silo's data cannot be loaded, partitioned or split as the scenario asks."""


class ModelSourceError(FedsiloError):
    """A model's pretrained weights or tokenizer cannot be loaded."""


class FederationError(FedsiloError):
    """The job cannot go on (too few silos answered, silos disagree on the data's shape)."""


class JobNotFound(FederationError):
    """A job to resume or attach to is not in MLflow."""


class RegistryUnavailable(FedsiloError):
    """The model registry or its artifacts could not be read; the champion is kept, never replaced
    on doubt."""


class ReplyRefused(FedsiloError):
    """The coordinator refuses one silo's reply; the silo is left out of the step."""


class UpdateRefused(ReplyRefused):
    """An update fails the coordinator's checks (layout, finite values, count, norm)."""


class ChecksumError(ReplyRefused):
    """Weights whose sha256 differs from the one their reference announced."""


class SiloDeclined(FedsiloError):
    """A silo declines a step under its own rules; the message names the rule."""


class PolicyViolation(SiloDeclined):
    """A step breaks a rule of the silo's policy file; the message names the rule."""


class TrustError(FedsiloError):
    """A key, the roster or a signature is missing or wrong; the message says which and what to do."""


class SignatureError(TrustError):
    """A signed request or reply fails its check: signature, address, expiry or replay."""


class PrivacyBudgetExhausted(SiloDeclined):
    """A DP-SGD round would take the silo past its epsilon target."""


class StepFailed(FedsiloError):
    """A silo cannot do a step it was asked; the message says which and why."""


def exit_code(exc: BaseException) -> int:
    """The CLI's exit status for an error: 2 for a bad scenario or name, 130 when interrupted,
    1 for every other fedsilo error."""
    if isinstance(exc, ScenarioError | UnknownKind):
        return EXIT_INVALID
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILED
