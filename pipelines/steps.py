"""The wire between the coordinator and a silo's `silo-job` flow run, through Prefect's API.

A step request is a flow run input of the silo's run (key `step-<request>`); the silo answers with
a flow run input of the coordinator's run (key `reply-<request>-<nonce>`). Prefect's own run-input
store carries them, so no shared folder is polled. Anyone holding the Prefect API credential can
write these inputs, so none is trusted for what it says: requests are JWS the coordinator signed
and replies JWS the silo signed (fedsilo.trust). Weights never travel here: requests and replies
hold WeightRefs and small records.
"""

import time
import uuid
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from pydantic import BaseModel, Field, ValidationError

REQUEST_ID = r"^[a-z0-9-]{1,64}$"  # what a Prefect run-input key may hold; anything else is dropped unread
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.5  # bounds what waiting adds to a step: see BENCHMARKS.md section 8


class StepRequest(BaseModel):
    """One signed step for a silo's run (a JWS the coordinator signed: fedsilo.trust.claims);
    `request` is the step's batch id, which the replies' keys carry; `stop` ends the run."""

    request: str = Field(pattern=REQUEST_ID)
    token: str = ""
    label: str = Field("", max_length=200)
    stop: bool = False


class StepReply(BaseModel):
    """A silo's signed reply (a JWS) to its request of batch `request`. `silo` is only who the
    reply claims to be from: the coordinator checks the signature under that silo's roster key."""

    request: str = Field(pattern=REQUEST_ID)
    silo: str = Field(max_length=200)
    token: str


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def send_request(client: SyncPrefectClient, session: UUID, request: StepRequest) -> None:
    client.create_flow_run_input(session, f"step-{request.request}", request.model_dump_json())


def send_reply(client: SyncPrefectClient, coordinator: UUID, reply: StepReply) -> None:
    key = f"reply-{reply.request}-{uuid.uuid4().hex[:8]}"
    client.create_flow_run_input(coordinator, key, reply.model_dump_json(), sender=reply.silo)


def _parsed(kind: type[BaseModel], value: str) -> BaseModel | None:
    try:
        return kind.model_validate_json(value)
    except ValidationError:
        return None


def take_new(
    client: SyncPrefectClient, run: UUID, prefix: str, seen: set[str], kind: type[BaseModel]
) -> list[BaseModel]:
    """Inputs of `run` under `prefix` not seen before, parsed as `kind`; unreadable ones dropped."""
    found = client.filter_flow_run_input(run, prefix, limit=200, exclude_keys=seen)
    seen.update(item.key for item in found)
    parsed = [_parsed(kind, item.value) for item in found]
    return [item for item in parsed if item is not None]


class Backoff:
    """Poll fast right after activity, then slower, never slower than MAX_POLL_SECONDS."""

    def __init__(self) -> None:
        self.delay = FIRST_POLL_SECONDS

    def wait(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 1.5, MAX_POLL_SECONDS)

    def reset(self) -> None:
        self.delay = FIRST_POLL_SECONDS
