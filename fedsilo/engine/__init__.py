"""The engine: one federated job's round loop and what it is made of, with no Prefect in it.

job.py          Coordinator (the round loop and the job's lifecycle) and run_job (its wiring)
screening.py    which replies count: absent, declined, refused
aggregation.py  the strategy behind the update checks; the base privacy wrappers wrap
ledger.py       the weight files a job holds, deleted whatever happens
start.py        round 0: pretrained, warm start from the champion, or resume
recording.py    what a round records (tracker) and tells (reporters)
aftermath.py    personalization, the silo x silo matrix, registration
champion.py     whether the champion alias moves
protocols.py    the Tracker and Reporter a job is given (fedsilo.transport: the Transport)
"""

from fedsilo.engine.job import Coordinator
from fedsilo.engine.protocols import NullTracker, Reporter, Tracker
from fedsilo.engine.run import run_job

__all__ = ["Coordinator", "NullTracker", "Reporter", "Tracker", "run_job"]
