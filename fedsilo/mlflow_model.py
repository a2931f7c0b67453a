"""MLflow "model from code" for a logged global model: MLflow runs this file when loading it.

Logged with every round's global model by fedsilo.tracking.packaging, together with fedsilo's and
the model zoo's code; not imported by fedsilo itself. `mlflow.pyfunc.load_model("models:/<id>")`
predicts label names, with or without fedsilo installed.
"""

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd


class GlobalModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: predicts label names for texts (column `text`) or images (N x C x H x W)."""

    def load_context(self, context) -> None:
        from safetensors.torch import load_file

        from fedsilo.modeling import build_model, tokenizer_for
        from fedsilo.scenario import ModelSpec

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.spec = ModelSpec.model_validate(meta["model"])
        self.labels = meta["labels"]
        self.model = build_model(self.spec, len(self.labels), tuple(meta["input_shape"]), 0)
        self.model.load_state_dict(load_file(context.artifacts["weights"]))
        self.tokenizer = tokenizer_for(self.spec)

    def predict(self, context, model_input: list[Any], params=None) -> list[str]:
        import numpy as np

        from fedsilo.data.examples import Examples
        from fedsilo.modeling import encode
        from fedsilo.training import predict

        if isinstance(model_input, pd.DataFrame):
            model_input = model_input["text"].astype(str).tolist()
        examples = Examples(model_input, np.array([self.labels[0]] * len(model_input)))
        probs = predict(self.model, encode(examples, self.labels, self.spec, "input", self.tokenizer), 64)
        return [self.labels[i] for i in probs.argmax(1)]


mlflow.models.set_model(GlobalModel())
