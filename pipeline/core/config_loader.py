"""Reads `pipeline_config.yaml` once, applies `--set section.key=value` overrides, validates.

Errors name the key, the value and what is allowed, in one line each:

    >>> load_config(None, ["tokenizer.max_vocab=-5"])
    Traceback (most recent call last):
    ...
    pipeline.core.errors.ConfigError: config error: tokenizer.max_vocab = -5: Input should be greater than or equal to 1
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ConfigError


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Returns the validated config of `path` (None: all defaults) with overrides applied.

    Args:
        path: the YAML file; None uses the defaults of `PipelineConfig`.
        overrides: strings `section.key=value`; the value is parsed as YAML, so
            `train.epochs=3` is an int and `data.train=[a.txt, b.txt]` a list.
    """
    raw = _read_yaml(path) if path is not None else {}
    for item in overrides:
        _apply_override(raw, item)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, raw, path)) from None


def dump_config(config: PipelineConfig) -> str:
    """The effective config as YAML, in the file's own layout."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten_config(config: PipelineConfig) -> dict[str, Any]:
    """`{"section.key": value}` for every key, e.g. for MLflow params."""
    flat: dict[str, Any] = {}
    for section, values in config.model_dump(mode="json").items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    if not os.path.exists(path):
        raise ConfigError(
            f"config error: config file {os.fspath(path)!r} does not exist; "
            "pass --config with the path of your pipeline_config.yaml"
        )
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config error: {os.fspath(path)!r} is not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config error: {os.fspath(path)!r} must be a mapping of sections "
            f"({', '.join(PipelineConfig.model_fields)}), got {type(raw).__name__}"
        )
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(
            f"config error: --set {item!r} must look like section.key=value "
            "(for example --set train.epochs=3, or --set serve.batching.max_batch_size=16)"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    target = raw
    for depth, part in enumerate(parts[:-1]):
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config error: {'.'.join(parts[:depth + 1])!r} must be a mapping")
    target[parts[-1]] = value


def _describe(err: ValidationError, raw: dict[str, Any], path: Any) -> str:
    source = f" (in {os.fspath(path)})" if path is not None else ""
    lines = [_describe_one(e, raw) + source for e in err.errors()]
    return "\n".join(lines)


def _describe_one(e: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = [str(p) for p in e["loc"] if not isinstance(p, int)]
    dotted = ".".join(loc) or "config"
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        maybe = f"; did you mean {'.'.join(loc[:-1] + hint)!r}?" if hint else ""
        return (
            f"config error: unknown key {dotted!r}{maybe} "
            f"(allowed: {', '.join(allowed)})"
        )
    if e["type"] == "missing":
        return f"config error: {dotted} is required"
    msg = e["msg"].removeprefix("Value error, ")
    if len(loc) <= 1 and e["type"] == "value_error":
        return f"config error: {dotted}: {msg}"
    return f"config error: {dotted} = {e.get('input')!r}: {msg}"


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    for name in loc:
        field = model.model_fields.get(name)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)
