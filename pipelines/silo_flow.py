"""The flow `silo-round`: one step of one silo, run by that silo's own worker in distributed mode.

The coordinator starts one flow run per silo per step through the silo's deployment
(`silo-round/<silo>` on work pool `fedsilo-<silo>`): `prepare` describes the silo's data, `fit`
trains from the global weights and writes the update, `evaluate` scores weights on the silo's test
split. Weights come and go by URI with a sha256 checksum; the small reply is written as JSON to
`reply_uri` in the same shared store. The silo's data location comes from this process's
environment (FEDSILO_SILO_DATA, set by `fedsilo worker --data`), never from the coordinator.
`personalize` fine-tunes the final global model on the silo's own data and reports its score on
the silo's own test split. Under secure aggregation `fit` keeps the silo's update on the silo's
own disk and `mask` sends it masked (see fedsilo.privacy.secagg).
"""

import os
from typing import Literal

from prefect import flow, get_run_logger

from fedsilo import artifacts
from fedsilo.messages import WeightRef, dump_reply
from fedsilo.scenario import Scenario
from fedsilo.silo import with_local_data
from pipelines.tasks import (
    evaluate_silo,
    fit_with_limits,
    mask_silo,
    personalize_silo,
    prepare_silo,
    score_silo,
)

SILO_FLOW = "silo-round"
DATA_ENV = "FEDSILO_SILO_DATA"


def pool_name(silo: str) -> str:
    """The work pool a silo's worker polls: one per silo, so each silo runs only its own steps."""
    return f"fedsilo-{silo}"


def local_view(scenario: Scenario, silo: str) -> Scenario:
    """The scenario with this silo's data where its own environment says, if it says."""
    path = os.environ.get(DATA_ENV)
    return with_local_data(scenario, silo, path) if path else scenario


@flow(
    name=SILO_FLOW,  # the coordinator names each run `<job>:<silo>-<step>`
    description="One silo's step of a federated job (prepare, fit, evaluate, personalize), by its data.",
    log_prints=True,
)
def silo_round(
    scenario: Scenario,
    silo: str,
    action: Literal["prepare", "fit", "mask", "evaluate", "score", "personalize"],
    step: str,
    reply_uri: str,
    weights: WeightRef | None = None,
    round_index: int = 0,
    update_uri: str = "",
    config: dict[str, float] | None = None,
    steps: int = 0,
    attempt: int = 0,
    peers: dict[str, str] | None = None,
    out_uri: str = "",
    models: dict[str, WeightRef] | None = None,
) -> str:
    """Run one step for `silo` and write its reply to `reply_uri`; returns that URI."""
    scenario = local_view(scenario, silo)
    if action == "prepare":
        reply = prepare_silo(scenario, silo)
    elif action == "fit":
        reply = fit_with_limits(scenario)(scenario, silo, round_index, weights, update_uri, config)
    elif action == "mask":
        reply = mask_silo(scenario, silo, round_index, attempt, peers or {}, update_uri, out_uri)
    elif action == "score":
        reply = score_silo(scenario, silo, models or {}, step)
    elif action == "personalize":
        reply = personalize_silo(scenario, silo, weights, steps)
    else:
        reply = evaluate_silo(scenario, silo, weights, step)
    artifacts.write_bytes(reply_uri, dump_reply(reply))
    get_run_logger().info("%s %s: reply written to %s", silo, step, reply_uri)
    return reply_uri
