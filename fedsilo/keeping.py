"""Each silo keeps the best model it can prove, and sees what it would have had alone.

After the last round a silo scores its candidates, in `evaluation.metric`, on its validation rows
(held out of its training split, trained on by no model): the final global model, its
personalized model (the global model fine-tuned on its own rows, `evaluation.personalize_steps`,
or its Ditto model, fedsilo.ditto), and its **alone** model: the starting model trained on its
own rows only, for as many optimizer steps as its federated work took. It keeps the best,
and on a tie the alone model, then the personalized one: a model from joining must score higher
than the alone model on the validation rows to be kept (a small validation split ties often, and
a tie proves nothing). So no silo keeps a model that scored below its alone model on its own
validation rows. Only the choice and the scores leave the silo.

The alone model is kept in the silo's private folder and reused while its rows, the model and the
training budget are the same, so recurring retraining on unchanged data does not pay for it twice.
Under DP-SGD a silo keeps the global model and trains nothing else: any other model would train
outside its privacy budget.
"""

import hashlib
import json

from safetensors.torch import load_file, save_file

from fedsilo.messages import Kept
from fedsilo.metrics import classification_metrics
from fedsilo.modeling import load_shared, shared_state
from fedsilo.privacy.pending import state_folder
from fedsilo.scenario import Scenario
from fedsilo.silo import EVAL_BATCH_SIZE, SiloParticipant, initial_state
from fedsilo.steps import Keep
from fedsilo.training import Progress, fit, predict
from fedsilo.weights import State, read_state

ALONE_SEED_KEY = 1_000_033  # seeds the alone model's training apart from rounds and personalization
PREFERENCE = ("alone", "personalized", "global")  # on equal validation scores, the first


def keep(scenario: Scenario, member: SiloParticipant, step: Keep, progress: Progress | None) -> Kept:
    """The silo's choice among its candidates, with the kept and the alone models' test scores."""
    if scenario.privacy.dp:
        note = "under privacy.dp a silo keeps the global model: any other would train outside its budget"
        return Kept(member.silo, "global", {}, member.evaluate(step.weights, step.exchange), note=note)
    candidates = {"global": _copy(member.personal.spliced(step.exchange, read_state(step.weights)))}
    personalized = None
    if step.personalize_steps:
        personalized = member.personalize(step.weights, step.personalize_steps, progress, step.exchange)
        candidates["personalized"] = _copy(shared_state(member.model))
    elif scenario.evaluation.personalization == "ditto" and (
        ditto := member.ditto.latest(step.exchange, step.rounds + 1)
    ):
        candidates["personalized"] = ditto
        personalized = _test_evaluation(member, ditto)
    reused = False
    if scenario.evaluation.alone:
        candidates["alone"], reused = alone_state(scenario, member, step.rounds, progress)
    if member.validation is None:
        validation, choice, note = {}, *_unproven(scenario, candidates)
    else:
        metric = scenario.evaluation.metric
        validation = {name: _validation_score(member, state, metric) for name, state in candidates.items()}
        choice, note = chosen(validation), ""
    alone = _test_evaluation(member, candidates["alone"]) if "alone" in candidates else None
    kept = _test_evaluation(member, candidates[choice])
    return Kept(member.silo, choice, validation, kept, alone, reused, note, personalized)


def _unproven(scenario: Scenario, candidates: dict[str, State]) -> tuple[str, str]:
    """What a silo without validation rows keeps: with validation off by choice the global model;
    with too few rows for a split its alone model, since nothing shows a model from joining does
    better (as on a tie)."""
    if not scenario.evaluation.validation_fraction:
        return "global", "evaluation.validation_fraction is 0: the silo keeps the global model"
    if "alone" in candidates:
        return "alone", "too few training rows for a validation split: the silo keeps its alone model"
    return (
        "global",
        "too few training rows for a validation split and no alone model: it keeps the global one",
    )


def chosen(validation: dict[str, float]) -> str:
    """The candidate with the best validation score; on a tie the first in PREFERENCE."""
    return max(validation, key=lambda name: (validation[name], -PREFERENCE.index(name)))


def alone_state(scenario: Scenario, member: SiloParticipant, rounds: int, progress) -> tuple[State, bool]:
    """The silo's alone model, and whether it was reused from an earlier job."""
    per_round = member.settings(ALONE_SEED_KEY, scenario.federation.local_steps).total_steps(
        len(member.train)
    )
    settings = member.on_course(member.settings(ALONE_SEED_KEY, per_round * rounds))
    path = state_folder(member.silo) / f"alone-{_alone_key(scenario, member, settings)}.safetensors"
    if path.exists():
        return load_file(str(path)), True
    load_shared(member.model, initial_state(scenario, member.input_shape))
    fit(member.model, member.train, settings, progress)
    state = _copy(shared_state(member.model))
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
    return state, False


def _alone_key(scenario: Scenario, member: SiloParticipant, settings) -> str:
    """What the alone model depends on: the silo's split rows, the model, the labels, the training."""
    facts = {
        "data": member.version,
        "model": scenario.model.model_dump(mode="json"),
        "labels": list(scenario.data.labels or []),
        "training": [
            settings.steps,
            settings.batch_size,
            settings.learning_rate,
            settings.optimizer,
            settings.seed,
            str(settings.schedule),
        ],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _copy(state: State) -> State:
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def _validation_score(member: SiloParticipant, state: State, metric: str) -> float:
    load_shared(member.model, state)
    probs = predict(member.model, member.validation, EVAL_BATCH_SIZE)
    return float(classification_metrics(member.validation.labels.numpy(), probs)[metric])


def _test_evaluation(member: SiloParticipant, state: State):
    load_shared(member.model, state)
    return member._evaluate_current()
