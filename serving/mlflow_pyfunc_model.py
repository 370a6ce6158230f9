"""The MLflow model of an lmpipe export: MLflow's models-from-code file.

MLflow copies this file into every logged model and runs it when the model is loaded
(`mlflow.pyfunc.load_model`, `mlflow models serve`). It imports nothing from this project,
only mlflow, numpy, pandas, tensorflow and tensorflow_text. The model's one artifact,
`saved_model`, is the TF Serving version folder itself. It is loaded the way TF Serving loads
it (`saved_model_session.py`, shipped beside this file through `code_paths`), so a
registry version and TF Serving give the same answers.

Input: a list of strings, or a DataFrame with a string column `prompt` (seq2seq: `source`)
or with only one column.
Output: a DataFrame with one string column, `text`, and one row per input row (beam
search: the best hypothesis, the signature's `text[:, 0]`).
Params, one value for the whole request, from the model's ParamSchema: `method` (greedy,
sample, top_k, top_p or beam_search; the default is the export's default signature) and
the export's knobs (max_new_tokens, temperature, k, p, beam_width, seed, ...).

Example:
    >>> model = mlflow.pyfunc.load_model("models:/lmpipe-lm@champion")
    >>> model.predict(["the meaning of"], params={"method": "beam_search", "beam_width": 4})
                        text
    0  the meaning of the ...
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

SAVED_MODEL_ARTIFACT = "saved_model"
GENERATION_METHODS = ("greedy", "sample", "top_k", "top_p", "beam_search")


class ExportedGenerator(mlflow.pyfunc.PythonModel):
    """Generates text from an lmpipe SavedModel through its SignatureDefs.

    Its model_config, written when the model is logged:
        input: the signatures' text input ("prompt" or "source");
        defaults: every param's default (method and knobs);
        max_batch_size, compute_budget: the limits of a request that `lmpipe serve` also
            sets (rows; rows x beam width x max_new_tokens).
    """

    def load_context(self, context) -> None:
        """Loads the SavedModel artifact as TF Serving does (`SessionModel`) and reads the export's
        limits from the model config.
        """
        import tensorflow_text  # noqa: F401 - registers the TF Text ops the graph uses
        from saved_model_session import SessionModel  # shipped in the model's code/ folder

        self.config = dict(context.model_config)
        self.session = SessionModel(context.artifacts[SAVED_MODEL_ARTIFACT])

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        """[B] prompts -> DataFrame with `text` [B]: the chosen signature's output."""
        options = {**self.config["defaults"], **(params or {})}
        method = options.pop("method")
        if method not in GENERATION_METHODS:
            raise _invalid(f"method must be one of {', '.join(GENERATION_METHODS)}, got {method!r}")
        texts = _texts(model_input, self.config["input"])
        self._check_size(len(texts), method, options)
        inputs = {name: np.full(len(texts), options[name]) for name in self.session.input_dtypes(method)
                  if name != self.config["input"]}
        inputs[self.config["input"]] = np.asarray([t.encode("utf-8") for t in texts], dtype=object)
        import tensorflow as tf

        try:
            outputs = self.session.run(method, inputs)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as err:
            raise _invalid(_check_message(err)) from None
        texts = outputs["text"] if outputs["text"].ndim == 1 else outputs["text"][:, 0]  # beams: best first
        return pd.DataFrame({"text": [t.decode("utf-8") for t in texts]})

    def _check_size(self, rows: int, method: str, options: dict) -> None:
        if rows > self.config["max_batch_size"]:
            raise _invalid(f"{rows} prompts in one request, over the limit of "
                           f"{self.config['max_batch_size']} (serve.max_batch_size): split the request")
        beams = int(options["beam_width"]) if method == "beam_search" else 1
        cost = rows * beams * int(options["max_new_tokens"])
        if cost > self.config["compute_budget"]:
            raise _invalid(f"the request asks for {rows} prompts x {beams} beams x "
                           f"{int(options['max_new_tokens'])} new tokens = {cost}, over the compute budget "
                           f"of {self.config['compute_budget']} (serve.compute_budget): ask for fewer")


def _texts(model_input, column: str) -> list[str]:
    """The request's strings: a list, a Series, or the DataFrame column `column` (or its
    only column)."""
    if isinstance(model_input, pd.DataFrame):
        if column in model_input.columns:
            model_input = model_input[column]
        elif len(model_input.columns) == 1:
            model_input = model_input.iloc[:, 0]
        else:
            raise _invalid(f"the input needs a {column!r} column, got columns {list(model_input.columns)}")
    values = list(model_input.tolist() if hasattr(model_input, "tolist") else model_input)
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise _invalid(f"{column} {bad} is {type(values[bad]).__name__}, not a string")
    return values


def _check_message(err) -> str:
    """The text of the graph's failed check (TensorFlow puts it after its first line)."""
    lines = [line.strip() for line in err.message.splitlines() if line.strip()]
    text = next((line.split("assertion failed:", 1)[1].strip() for line in lines if "assertion failed:" in line),
                lines[-1] if lines else type(err).__name__)
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


mlflow.models.set_model(ExportedGenerator())
