"""`lmpipe check-export DIR`: proves an export runs on stock TF Serving without this project.

In a fresh Python process (`python -I`) that can import only tensorflow and
tensorflow_text (this project's packages are blocked from import), it:
- loads the SavedModel and calls every signature with its warmup request's inputs;
- lists every op of the graph and its functions: each must be registered by core
  TensorFlow or TensorFlow Text, none may be PyFunc/EagerPyFunc, no function may be
  XLA-compiled;
- checks every signature output is a dense tensor (no ragged or sparse outputs).

Example:
    >>> report = check_export("work/export/lm/3")
    >>> report["ok"], sorted(report["signatures"])
    (True, ['beam_search', 'greedy', 'sample', 'score', 'serving_default', 'top_k', 'top_p'])
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from serving.warmup import WARMUP_FILE, read_warmup_requests

_CHILD = r'''
import importlib.abc, json, sys
BLOCKED = {"pipeline", "trainer", "serving"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not available in a TF Serving process")
        return None

sys.meta_path.insert(0, Block())
import tensorflow as tf
import tensorflow_text  # registers the TF Text ops the graph may use
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

path, inputs_file = sys.argv[1], sys.argv[2]
requests = json.load(open(inputs_file))
report = {"signatures": {}, "problems": []}
proto = saved_model_pb2.SavedModel()
proto.ParseFromString(open(path + "/saved_model.pb", "rb").read())
meta = proto.meta_graphs[0]
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
for name, sig in meta.signature_def.items():
    for key, info in sig.outputs.items():
        if info.WhichOneof("encoding") != "name":
            report["problems"].append(f"{name} output {key} is not a dense tensor")
model = tf.saved_model.load(path)
for name, inputs in requests:
    fn = model.signatures[name]
    specs = fn.structured_input_signature[1]
    args = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
    try:
        out = fn(**args)
        report["signatures"][name] = {k: list(v.shape) for k, v in out.items()}
    except Exception as err:
        report["problems"].append(f"{name} failed: {type(err).__name__}: {str(err)[:300]}")
report["ops"] = len(ops)
report["python_modules"] = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("keras", "tf_keras", "tensorflow_text")})
print("REPORT " + json.dumps(report))
'''


def check_export(export_dir: str, timeout: int = 600) -> dict:
    """Runs the checks in a clean process; returns the report with an `ok` flag."""
    requests = read_warmup_requests(os.path.join(export_dir, "assets.extra", WARMUP_FILE))
    if not requests:
        return {"ok": False, "problems": ["assets.extra/tf_serving_warmup_requests is empty"], "signatures": {}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(requests, f)
        inputs_file = f.name
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, os.path.abspath(export_dir), inputs_file],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=tempfile.gettempdir())
    finally:
        os.unlink(inputs_file)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("REPORT ")), None)
    if line is None:
        return {"ok": False, "signatures": {}, "problems": [f"clean process failed: {proc.stderr[-2000:]}"]}
    report = json.loads(line[len("REPORT "):])
    expected = {name for name, _ in requests}
    missing = expected - set(report["signatures"])
    if missing and not report["problems"]:
        report["problems"].append(f"signatures not answered: {sorted(missing)}")
    report["ok"] = not report["problems"]
    return report
