"""The folders' floors hold: import-linter's contracts in `.importlinter` (layers
orchestrate > reports > serving > trainer > preprocess > core; the documents and pairs
pipelines independent; the MLflow model file free of lmpipe), on this tree and, to show the
check bites, on a copy with one upward import added."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(tree: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": tree}
    return subprocess.run([LINT, "--config", os.path.join(tree, ".importlinter"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_every_contract_is_kept():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 3 kept, 0 broken." in out.stdout


def test_an_upward_import_breaks_the_floors(tmp_path):
    for folder in ("pipeline", "trainer", "serving"):
        shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path)
    with open(tmp_path / "pipeline" / "core" / "tokenizer.py", "a") as f:
        f.write("\nfrom trainer.model_dir import build_model  # a ground module reaching up\n")
    with open(tmp_path / "pipeline" / "preprocess" / "pairs.py", "a") as f:
        f.write("\nimport pipeline.preprocess.documents  # one pipeline importing the other\n")

    out = _lint(str(tmp_path))

    assert out.returncode == 1, out.stdout + out.stderr
    assert "Contracts: 1 kept, 2 broken." in out.stdout
    assert "pipeline.core.tokenizer -> trainer.model_dir" in out.stdout
    assert "pipeline.preprocess.pairs -> pipeline.preprocess.documents" in out.stdout
