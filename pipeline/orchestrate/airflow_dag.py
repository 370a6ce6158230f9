"""An Airflow DAG with one task per stage, calling the same code as `lmpipe run`.

Importable without Airflow (the DAG is only built when Airflow is installed). To use it,
copy or symlink this file into your DAGs folder and set `LMPIPE_CONFIG` to the absolute
path of `pipeline_config.yaml` (and optionally `LMPIPE_SCHEDULE`, a cron expression).

The tasks share nothing in memory: each one re-reads the config and finds its inputs on
disk, exactly as the stages of `lmpipe run` do, so any task can be retried alone.
`lmpipe run` (the `promote` task) holds the run lock while it decides.

Example:
    >>> callables = stage_callables("/srv/lm/pipeline_config.yaml")
    >>> list(callables)
    ['preprocess', 'train', 'report', 'evaluate', 'export', 'promote']
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Callable

try:  # Airflow is optional: this module imports without it
    from airflow import DAG
    from airflow.operators.python import PythonOperator
except ImportError:  # pragma: no cover - depends on the environment
    DAG = None
    PythonOperator = None


def stage_callables(config_path: str) -> dict[str, Callable[[], None]]:
    """One function per stage. Each runs `lmpipe run` up to its stage: the stages before
    it find their work done on disk and skip, so a task does only its own work."""
    from pipeline.orchestrate.scheduled_run import STAGES

    def task(stage: str) -> Callable[[], None]:
        def run_until() -> None:
            from pipeline.core.config_loader import load_config
            from pipeline.orchestrate.scheduled_run import EXIT_NOT_BETTER, run_pipeline

            manifest = run_pipeline(load_config(config_path), until=stage)
            if manifest["exit_code"] not in (0, EXIT_NOT_BETTER):
                raise RuntimeError(f"lmpipe {stage} failed: {manifest.get('reason')}")

        return run_until

    return {stage: task(stage) for stage in STAGES}


def create_dag(config_path: str, schedule: str = "0 3 * * *", dag_id: str = "lmpipe"):
    """The DAG preprocess >> train >> report >> evaluate >> export >> promote; needs Airflow."""
    if DAG is None:
        raise ImportError("apache-airflow is not installed; pip install apache-airflow to use this DAG")
    with DAG(dag_id=dag_id, schedule=schedule, start_date=datetime(2026, 1, 1), catchup=False,
             max_active_runs=1, tags=["lmpipe"]) as dag:
        tasks = [PythonOperator(task_id=stage, python_callable=fn)
                 for stage, fn in stage_callables(config_path).items()]
        for upstream, downstream in zip(tasks, tasks[1:]):
            upstream >> downstream
    return dag


if DAG is not None and os.environ.get("LMPIPE_CONFIG"):
    dag = create_dag(os.environ["LMPIPE_CONFIG"], os.environ.get("LMPIPE_SCHEDULE", "0 3 * * *"))
