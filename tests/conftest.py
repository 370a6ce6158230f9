"""Shared fixtures: tiny corpora written to temp folders, and a quiet TensorFlow."""

import glob
import os
import subprocess
import sys
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from trainer.distribute import free_local_ports as free_ports  # noqa: E402,F401  (tests import it from here)

CORPORA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora"))


def write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def start_lmpipe_serve(model_base, name, *config_args, timeout=120):
    """`lmpipe serve` on free REST and gRPC ports for `model_base` (`config_args`: more
    flags, --set overrides): (process, base URL, ServingClient of model `name`, its first
    status); the process's `grpc_port` attribute is its gRPC port."""
    from serving.client import ServingClient

    port, grpc_port = free_ports(2)
    lmpipe = os.path.join(os.path.dirname(sys.executable), "lmpipe")
    server = subprocess.Popen([lmpipe, "serve", "--model-base-path", str(model_base), "--port", str(port),
                               "--grpc-port", str(grpc_port), *config_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.grpc_port = grpc_port
    url = f"http://127.0.0.1:{port}"
    client = ServingClient(url, name)
    deadline = time.time() + timeout
    while True:
        try:
            return server, url, client, client.status()
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise AssertionError("lmpipe serve did not start") from None
            time.sleep(0.5)


def session_path_signatures(export_dir):
    """Replays every warmup record of an export the way TF Serving does (`SessionModel`: a
    Session over the MetaGraph, the saver's restore op, the init op, tensor names) and
    asserts each answer equals `tf.saved_model.load`'s for the same request: tokens,
    lengths and texts exactly, floats to float32 rounding. Returns the signatures run."""
    import numpy as np
    import tensorflow as tf

    from serving.saved_model_session import SessionModel
    from serving.warmup import WARMUP_FILE, read_warmup_requests

    session, objects = SessionModel(str(export_dir)), tf.saved_model.load(str(export_dir))
    ran = []
    for name, inputs in read_warmup_requests(os.path.join(export_dir, "assets.extra", WARMUP_FILE)):
        answer = session.run(name, inputs)
        fn = objects.signatures[name]
        specs = fn.structured_input_signature[1]
        reference = fn(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
        assert set(answer) == set(reference), name
        for key, value in answer.items():
            if np.issubdtype(value.dtype, np.floating):
                np.testing.assert_allclose(value, reference[key].numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(value, reference[key].numpy(), err_msg=f"{name} {key}")
        ran.append(name)
    session.close()
    return ran


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free port of 127.0.0.1 (SQLite backend, its own artifact
    store): (URI, process)."""
    port = free_ports()[0]
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start in 90 s")
    yield uri, proc
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait()


PYFUNC_CHILD = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pipeline", "trainer", "serving"}:
            raise ImportError(f"{name} is not importable here")
sys.meta_path.insert(0, Block())
import mlflow
uri, texts, calls = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
model = mlflow.pyfunc.load_model(uri)
print("ANSWERS " + json.dumps([model.predict(texts, params=params)["text"].tolist() for params in calls]))
"""


def pyfunc_in_clean_process(model_uri, tracking_uri, texts, calls):
    """`mlflow.pyfunc.load_model(model_uri).predict(texts, params=p)["text"]` for each p of
    `calls`, in a `python -I` process where this project's packages cannot be imported."""
    import json

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-I", "-c", PYFUNC_CHILD, model_uri, json.dumps(texts), json.dumps(calls)],
                         capture_output=True, text=True, timeout=300, env=env, cwd="/")
    answers = [line for line in out.stdout.splitlines() if line.startswith("ANSWERS ")]
    assert out.returncode == 0 and answers, f"the clean process failed (rc {out.returncode}): {out.stderr[-3000:]}"
    return json.loads(answers[0][len("ANSWERS "):])


def session_texts(export_dir, signature, texts, **knobs):
    """The `text` output of `signature` for `texts` in TF Serving's Session path, every knob
    at its default unless given (as the pyfunc model fills them); beams: the best."""
    from serving.knobs import KNOB_SPECS
    from serving.saved_model_session import SessionModel

    session = SessionModel(str(export_dir))
    text_input = "source" if "source" in session.input_dtypes(signature) else "prompt"
    values = {**{k: default for k, (_, default) in KNOB_SPECS.items()}, **knobs}
    inputs = {name: [values[name]] * len(texts) for name in session.input_dtypes(signature) if name != text_input}
    inputs[text_input] = [t.encode() for t in texts]
    out = session.run(signature, inputs)["text"]
    session.close()
    return [t.decode() for t in (out if out.ndim == 1 else out[:, 0])]


def run_corpus(root, files=2, lines=300, offset=0):
    """`files` files of `lines` lines under root/corpus (a new `offset`: new files, new data)."""
    for f in range(files):
        text = "".join(f"the cat {(i + f + offset) % 7} sat on mat {(i * 3 + f) % 5} .\n" for i in range(lines))
        write(root / "corpus" / f"part{f + offset}.txt", text)


def run_args(root, *extra):
    """`lmpipe run` arguments for a tiny LM on `run_corpus`, everything under `root`."""
    return ["--set", f"data.train={root / 'corpus'}/*.txt", "--set", "data.format=lines",
            "--set", f"preprocess.output_dir={root / 'data'}", "--set", f"train.output_dir={root / 'train'}",
            "--set", f"export.base_path={root / 'export'}", "--set", f"run.work_dir={root / 'runs'}",
            "--set", f"tracking.uri=sqlite:///{root}/mlflow.db", "--set", "tracking.registered_model=lm",
            "--set", "model.hidden_dim=16", "--set", "model.embedding_dim=16", "--set", "model.num_layers=1",
            "--set", "model.dropout=0.0", "--set", "train.batch_size=4", "--set", "train.bptt=8",
            "--set", "train.epochs=2", "--set", "train.optimizer=adam", "--set", "train.learning_rate=0.01",
            "--set", "run.reports=false", *extra]


def counting_streams(train_repeats: int = 200, valid_repeats: int = 30):
    """A learnable int32 stream for tiny LMs: 4..9 counting up and wrapping (6 tokens a
    repeat), 10% of the train tokens replaced by noise from 4..11 -> (train, valid)."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = np.tile(np.arange(4, 10), train_repeats)
    noise = rng.random(base.size) < 0.1
    train = np.where(noise, rng.integers(4, 12, base.size), base).astype(np.int32)
    return train, np.tile(np.arange(4, 10), valid_repeats).astype(np.int32)


def die_at_call(trainer, call):
    """Makes `trainer`'s compiled step raise KeyboardInterrupt at its `call`-th call (a kill)."""
    real_step, calls = trainer._train_step, []

    def step(*args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real_step(*args)

    trainer._train_step = step


def latest_checkpoint_step(root):
    """Global step of the newest checkpoint of any training run under `root/train` (0: none)."""
    import re

    runs = os.listdir(root / "train") if (root / "train").exists() else []
    for run in runs:
        index = root / "train" / run / "checkpoints" / "checkpoint"
        if index.exists():
            found = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', index.read_text())
            if found:
                return int(found.group(1))
    return 0


def read_split(dataset_dir, split):
    """Every record of one split as dicts, in (doc, offset) order."""
    from pipeline.core.records import parse_example
    import tensorflow as tf

    records = []
    for path in sorted(glob.glob(os.path.join(dataset_dir, f"{split}-*.tfrecord.gz"))):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            records.append(parse_example(raw))
    return sorted(records, key=lambda r: (r["doc"], r["offset"]))


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Run each test in its own folder: no pipeline_config.yaml there, so the CLI
    starts from the schema's defaults and writes nothing into the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny_corpus(tmp_path):
    """Train / valid / test files whose token ids are known by hand."""
    return {
        "train": write(tmp_path / "corpus" / "train.txt", "the cat sat\nthe dog\n"),
        "valid": write(tmp_path / "corpus" / "valid.txt", "the cat\n"),
        "test": write(tmp_path / "corpus" / "test.txt", "a cat\n"),
    }


def preprocess_args(tmp_path, corpus, *extra):
    args = ["preprocess", "--set", f"preprocess.output_dir={tmp_path / 'data'}"]
    for split, path in corpus.items():
        args += ["--set", f"data.{split}={path}"]
    return args + list(extra)
