"""Errors that reach the user as one clear line, each with its own exit code."""


class LmpipeError(Exception):
    """Base of the errors the CLI prints as one line (no traceback)."""

    exit_code = 1


class ConfigError(LmpipeError):
    """The config file or a --set override is wrong: a key, a type or a value."""

    exit_code = 2


class UsageError(LmpipeError):
    """A command-line argument, or the request it makes, is wrong (a knob out of range,
    a URL without a scheme, a request the model server refused as bad)."""

    exit_code = 2


class InputDataError(LmpipeError):
    """The corpus cannot be used: missing path, empty glob, binary file, empty corpus."""

    exit_code = 3


class ServiceUnreachable(LmpipeError):
    """A server the command needs does not answer: a model server (TF Serving, lmpipe serve)."""

    exit_code = 4


class ClusterError(LmpipeError):
    """A peer of a multi-worker training stopped; restarting the workers resumes the run."""

    exit_code = 5
