"""`lmpipe check-export DIR`: proves an export runs on stock TF Serving without this project.

In a fresh Python process (`python -I`) that can import only tensorflow and
tensorflow_text (this project's packages are blocked from import), it:
- loads the SavedModel the way TF Serving does (`serving/saved_model_session.py`, run
  from its file: a Session over the MetaGraph, the saver's restore op, the init op) and
  replays every warmup record there, by the SignatureDef's tensor names;
- runs the same requests through `tf.saved_model.load` and requires the same outputs:
  tokens, texts and lengths exactly (same seeds, same tokens), log-probabilities within
  float32 rounding (`FLOAT_RTOL`: in a Session, grappler's constant folding sees the whole
  graph and orders a few float ops of the beam loop differently; measured 1 ulp);
- lists every op of the graph and its functions: each must be registered by core
  TensorFlow or TensorFlow Text, none may be PyFunc/EagerPyFunc, no function may be
  XLA-compiled;
- checks every signature output is a dense tensor (no ragged or sparse outputs), and
  that every signature has a warmup record.

Example:
    >>> report = check_export("work/export/lm/3")
    >>> report["ok"], sorted(report["signatures"])
    (True, ['beam_search', 'greedy', 'sample', 'score', 'serving_default', 'top_k', 'top_p'])
    >>> report["warmup_records"][0]
    {'record': 0, 'signature': 'beam_search', 'outputs': {...}, 'equals_object_load': True}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from serving import saved_model_session
from serving.warmup import WARMUP_FILE, read_warmup_requests

FLOAT_RTOL = 1e-6

_CHILD = r'''
import importlib.abc, json, runpy, sys
BLOCKED = {"pipeline", "trainer", "serving"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not available in a TF Serving process")
        return None

sys.meta_path.insert(0, Block())
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the TF Text ops the graph may use
from tensorflow.python.framework import op_def_registry

path, inputs_file, session_file = sys.argv[1], sys.argv[2], sys.argv[3]
FLOAT_RTOL = float(sys.argv[4])
requests = json.load(open(inputs_file))
report = {"signatures": {}, "warmup_records": [], "problems": []}
SessionModel = runpy.run_path(session_file)["SessionModel"]  # TF Serving's loading path
model = SessionModel(path)
meta = model.meta_graph
ops = set(n.op for n in meta.graph_def.node)
for fn in meta.graph_def.library.function:
    ops.update(n.op for n in fn.node_def)
    attr = fn.attr.get("_XlaMustCompile")
    if attr is not None and attr.b:
        report["problems"].append(f"function {fn.signature.name} is XLA-compiled")
library = {fn.signature.name for fn in meta.graph_def.library.function}
for op in sorted(ops):
    if op in ("PyFunc", "PyFuncStateless", "EagerPyFunc") or op.startswith("Xla"):
        report["problems"].append(f"op {op} cannot run in TF Serving")
    elif op not in library and op_def_registry.get(op) is None:
        report["problems"].append(f"op {op} is not registered by tensorflow or tensorflow_text")
for name, sig in model.signature_defs.items():
    for key, info in sig.outputs.items():
        if info.WhichOneof("encoding") != "name":
            report["problems"].append(f"{name} output {key} is not a dense tensor")
objects = tf.saved_model.load(path)
for index, (name, inputs) in enumerate(requests):
    try:
        out = model.run(name, inputs)
    except Exception as err:
        report["problems"].append(f"warmup record {index} ({name}) fails in a TF Serving Session: "
                                  f"{type(err).__name__}: {str(err)[:300]}")
        continue
    fn = objects.signatures[name]
    specs = fn.structured_input_signature[1]
    reference = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
    differ, float_gap = [], 0.0
    for k, value in out.items():
        ref = reference[k].numpy()
        if np.issubdtype(value.dtype, np.floating):  # within float32 rounding (see the docstring)
            close = value.shape == ref.shape and np.allclose(value, ref, rtol=FLOAT_RTOL, atol=FLOAT_RTOL)
            float_gap = max(float_gap, float(np.max(np.abs(value - ref), initial=0.0)) if close else float_gap)
        else:
            close = np.array_equal(value, ref)
        if not close:
            differ.append(k)
    if differ:
        report["problems"].append(f"warmup record {index} ({name}): outputs {differ} differ between "
                                  "the Session and tf.saved_model.load")
    shapes = {k: list(v.shape) for k, v in out.items()}
    report["signatures"][name] = shapes
    report["warmup_records"].append({"record": index, "signature": name, "outputs": shapes,
                                     "equals_object_load": not differ, "max_float_difference": float_gap})
for name in sorted(set(model.signature_defs) - {r[0] for r in requests}):
    report["problems"].append(f"signature {name} has no warmup record")
report["ops"] = len(ops)
report["python_modules"] = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("keras", "tf_keras", "tensorflow_text")})
print("REPORT " + json.dumps(report))
'''


def check_export(export_dir: str, timeout: int = 600) -> dict:
    """Runs the checks in a clean process; returns the report with an `ok` flag."""
    if not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        return {"ok": False, "signatures": {}, "warmup_records": [],
                "problems": [f"no SavedModel in {export_dir} (saved_model.pb missing)"]}
    warmup = os.path.join(export_dir, "assets.extra", WARMUP_FILE)
    requests = read_warmup_requests(warmup) if os.path.exists(warmup) else []
    if not requests:
        return {"ok": False, "problems": ["assets.extra/tf_serving_warmup_requests is missing or empty"],
                "signatures": {}, "warmup_records": []}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(requests, f)
        inputs_file = f.name
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, os.path.abspath(export_dir), inputs_file,
                               saved_model_session.__file__, str(FLOAT_RTOL)],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=tempfile.gettempdir())
    finally:
        os.unlink(inputs_file)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("REPORT ")), None)
    if line is None:
        return {"ok": False, "signatures": {}, "warmup_records": [],
                "problems": [f"clean process failed: {proc.stderr[-2000:]}"]}
    report = json.loads(line[len("REPORT "):])
    expected = {name for name, _ in requests}
    missing = expected - set(report["signatures"])
    if missing and not report["problems"]:
        report["problems"].append(f"signatures not answered: {sorted(missing)}")
    report["ok"] = not report["problems"]
    return report
