"""A silo extension that lies (`fedsilo worker --extension tests.poisoned_silo`): it trains as an
honest silo does, then fills its update with NaN and signs a reply naming that file, with its
true checksum. The coordinator sees what a dishonest or broken silo would send, signed by it."""

from dataclasses import replace

from fedsilo.handler import handles
from fedsilo.silo_steps import fit
from fedsilo.steps import Fit
from fedsilo.weights import read_state, write_state


@handles(Fit)
def poisoned_fit(scenario, silo, step, progress):
    report = fit(scenario, silo, step, progress)
    if report.update is None:
        return report
    state = {
        k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in read_state(report.update).items()
    }
    return replace(report, update=write_state(state, report.update.uri))
