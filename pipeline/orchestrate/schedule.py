"""`lmpipe schedule`: a crontab line or a systemd service + timer that runs `lmpipe run`.

Both run from the config's folder with absolute paths, append to `run.log_file`, and rely
on `lmpipe run`'s own lock, so overlapping starts are harmless.

Example:
    >>> print(crontab_line("/srv/lm/pipeline_config.yaml", "0 3 * * *", "/srv/lm/work/runs/run.log"))
    0 3 * * * cd /srv/lm && /srv/lm/.venv/bin/lmpipe run --config ... >> ... 2>&1 # lmpipe:/srv/lm/...
    >>> on_calendar("30 2 * * 1-5")
    'Mon..Fri *-*-* 02:30:00'
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from pipeline.core.errors import ConfigError

_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def _lmpipe() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "lmpipe")
    return beside if os.path.exists(beside) else (shutil.which("lmpipe") or "lmpipe")


def _command(config_path: str, log_file: str) -> tuple[str, str, str]:
    config = os.path.abspath(config_path)
    folder = os.path.dirname(config)
    log = log_file if os.path.isabs(log_file) else os.path.join(folder, log_file)
    return folder, f"{shlex.quote(_lmpipe())} run --config {shlex.quote(config)}", log


def _check_cron(cron: str) -> list[str]:
    fields = cron.split()
    if len(fields) != 5:
        raise ConfigError(f"--cron {cron!r} must have 5 fields: minute hour day-of-month month day-of-week")
    return fields


def crontab_line(config_path: str, cron: str, log_file: str) -> str:
    """One crontab line that runs `lmpipe run --config <config_path>` at `cron` in the config's
    folder, appending to `log_file`; tagged with the config's path so --install replaces it.
    """
    _check_cron(cron)
    folder, command, log = _command(config_path, log_file)
    return (f"{cron} mkdir -p {shlex.quote(os.path.dirname(log))} && cd {shlex.quote(folder)} && "
            f"{command} >> {shlex.quote(log)} 2>&1 # lmpipe:{os.path.abspath(config_path)}")


def _calendar_field(value: str, width: int, name: str) -> str:
    if value == "*":
        return "*"
    parts = []
    for part in value.split(","):
        bounds = part.split("-")
        if not all(b.isdigit() for b in bounds) or len(bounds) > 2:
            raise ConfigError(f"cron {name} {value!r}: only numbers, lists and ranges convert to systemd "
                              "(write OnCalendar by hand for steps like */5)")
        parts.append("..".join(b.zfill(width) for b in bounds))
    return ",".join(parts)


def on_calendar(cron: str) -> str:
    """systemd OnCalendar for a cron expression (numbers, lists, ranges and *)."""
    minute, hour, dom, month, dow = _check_cron(cron)
    day = ""
    if dow != "*":
        names = []
        for part in dow.split(","):
            bounds = part.split("-")
            if not all(b.isdigit() and int(b) <= 7 for b in bounds):
                raise ConfigError(f"cron day-of-week {dow!r}: use numbers 0-7")
            names.append("..".join(_DAYS[int(b)] for b in bounds))
        day = ",".join(names) + " "
    date = f"*-{_calendar_field(month, 2, 'month')}-{_calendar_field(dom, 2, 'day-of-month')}"
    time = f"{_calendar_field(hour, 2, 'hour')}:{_calendar_field(minute, 2, 'minute')}:00"
    return f"{day}{date} {time}"


def systemd_quote(arg: str) -> str:
    """One argument of an Exec*= line, as systemd reads it back: double-quoted with `\\`
    and `"` escaped, and `%` (specifiers) and `$` (environment variables) doubled.

    Example:
        >>> systemd_quote("/a b/my config.yaml")
        '"/a b/my config.yaml"'
    """
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def systemd_units(config_path: str, cron: str, log_file: str) -> dict[str, str]:
    """{"lmpipe.service": ..., "lmpipe.timer": ...}; paths may hold spaces and quotes."""
    folder, command, log = _command(config_path, log_file)
    script = f"{command} >> {shlex.quote(log)} 2>&1"
    service = (
        "[Unit]\nDescription=lmpipe scheduled run (preprocess, train, export, promote)\n\n"
        "[Service]\nType=oneshot\n"
        f"WorkingDirectory={folder.replace('%', '%%')}\n"
        f"ExecStartPre=/bin/mkdir -p {systemd_quote(os.path.dirname(log))}\n"
        f"ExecStart=/bin/sh -c {systemd_quote(script)}\n"
        "SuccessExitStatus=10\n"  # 'not better' is a normal outcome, not a failure
    )
    timer = (
        "[Unit]\nDescription=Run lmpipe on a schedule\n\n"
        f"[Timer]\nOnCalendar={on_calendar(cron)}\nPersistent=true\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )
    return {"lmpipe.service": service, "lmpipe.timer": timer}


def schedule_command(config_path: str, cron: str, systemd: bool = False, install: bool = False,
                     log_file: str = "work/runs/lmpipe-run.log", systemd_dir: str | None = None) -> str:
    """What to install (printed), and with `install` installs it; returns the text to print."""
    if not systemd:
        line = crontab_line(config_path, cron, log_file)
        if install:
            _install_crontab(line, os.path.abspath(config_path))
            return f"installed in the user crontab:\n{line}\n"
        return line + "\n"
    units = systemd_units(config_path, cron, log_file)
    if install:
        folder = systemd_dir or os.path.expanduser("~/.config/systemd/user")
        os.makedirs(folder, exist_ok=True)
        for name, text in units.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
        return (f"wrote {', '.join(units)} to {folder}; enable with:\n"
                "  systemctl --user daemon-reload && systemctl --user enable --now lmpipe.timer\n")
    return "".join(f"# {name}\n{text}\n" for name, text in units.items())


def _install_crontab(line: str, config: str) -> None:
    if shutil.which("crontab") is None:
        raise ConfigError("crontab is not installed here; add the printed line to your scheduler instead")
    current = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    lines = [l for l in current.stdout.splitlines() if not l.endswith(f"# lmpipe:{config}")]
    subprocess.run(["crontab", "-"], input="\n".join(lines + [line]) + "\n", text=True, check=True)
