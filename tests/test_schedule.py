"""`lmpipe schedule` output, systemd conversion, and the Airflow DAG module without Airflow."""

import os
import shlex
import shutil
import subprocess

import pytest

from pipeline.core.errors import ConfigError
from pipeline.orchestrate.cli import main
from pipeline.orchestrate.schedule import crontab_line, on_calendar, schedule_command, systemd_units


def test_crontab_line_runs_lmpipe_run_from_the_config_folder(tmp_path):
    config = tmp_path / "pipeline_config.yaml"
    line = crontab_line(str(config), "0 3 * * *", "work/runs/run.log")
    assert line.startswith("0 3 * * * mkdir -p ")
    assert f"cd {tmp_path} && " in line and f"run --config {config}" in line
    assert f">> {tmp_path}/work/runs/run.log 2>&1 # lmpipe:{config}" in line


@pytest.mark.parametrize("cron, expected", [
    ("0 3 * * *", "*-*-* 03:00:00"),
    ("30 2 * * 1-5", "Mon..Fri *-*-* 02:30:00"),
    ("15 4,16 1 * 0", "Sun *-*-01 04,16:15:00"),
])
def test_on_calendar(cron, expected):
    assert on_calendar(cron) == expected


def test_unsupported_cron_is_a_clear_error():
    with pytest.raises(ConfigError, match="must have 5 fields"):
        on_calendar("0 3 * *")
    with pytest.raises(ConfigError, match=r"steps like \*/5"):
        on_calendar("*/5 * * * *")


def test_systemd_units_and_install(tmp_path):
    units = systemd_units(str(tmp_path / "c.yaml"), "0 3 * * *", "/var/log/lm.log")
    assert "Type=oneshot" in units["lmpipe.service"] and "SuccessExitStatus=10" in units["lmpipe.service"]
    assert "OnCalendar=*-*-* 03:00:00" in units["lmpipe.timer"] and "Persistent=true" in units["lmpipe.timer"]
    out = schedule_command(str(tmp_path / "c.yaml"), "0 3 * * *", systemd=True, install=True,
                           systemd_dir=str(tmp_path / "units"))
    assert sorted(os.listdir(tmp_path / "units")) == ["lmpipe.service", "lmpipe.timer"]
    assert "systemctl --user enable --now lmpipe.timer" in out


def test_schedule_cli_prints_crontab(capsys):
    assert main(["schedule", "--cron", "5 1 * * *"]) == 0
    assert capsys.readouterr().out.startswith("5 1 * * * mkdir -p ")


def test_airflow_dag_module_imports_without_airflow():
    from pipeline.orchestrate import airflow_dag

    assert list(airflow_dag.stage_callables("/x/pipeline_config.yaml")) == [
        "preprocess", "train", "report", "evaluate", "export", "promote"]
    if airflow_dag.DAG is None:
        with pytest.raises(ImportError, match="apache-airflow is not installed"):
            airflow_dag.create_dag("/x/pipeline_config.yaml")


def _exec_argv(service: str, key: str) -> list[str]:
    """The argv systemd reads from an Exec*= line (double quotes, backslash escapes, %% and $$)."""
    (line,) = [l for l in service.splitlines() if l.startswith(key + "=")]
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line[len(key) + 1:])]


def test_systemd_unit_keeps_paths_with_spaces_and_quotes_whole(tmp_path):
    folder = tmp_path / "a b" / "it's 100%"
    folder.mkdir(parents=True)
    config = str(folder / "my config.yaml")
    service = systemd_units(config, "0 3 * * *", "runs/l og.log")["lmpipe.service"]
    shell, flag, script = _exec_argv(service, "ExecStart")
    assert (shell, flag) == ("/bin/sh", "-c")
    argv = shlex.split(script)
    assert argv[1:4] == ["run", "--config", config] and argv[4:] == [">>", str(folder / "runs" / "l og.log"), "2>&1"]
    assert _exec_argv(service, "ExecStartPre") == ["/bin/mkdir", "-p", str(folder / "runs")]
    assert f"WorkingDirectory={str(folder).replace('%', '%%')}\n" in service
    if shutil.which("systemd-analyze"):
        unit = tmp_path / "lmpipe.service"
        unit.write_text(service)
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
