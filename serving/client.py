"""A client of TF Serving's REST API: the same calls work against `lmpipe serve` and a real
TF Serving. It fills every knob the signature takes (TF Serving requires all inputs).

Example:
    >>> client = ServingClient("http://127.0.0.1:8501", "lm")
    >>> client.generate(["The meaning of"], method="top_p", p=0.9, seed=7)[0]["text"]
    'life is ...'
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from serving.generation_module import SIGNATURE_KNOBS
from serving.knobs import KNOB_SPECS


class ServingError(RuntimeError):
    """The server answered with an error (its message included)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ServerUnreachable(OSError):
    """No answer from the server: refused connection, unknown host, timeout."""


def request_instances(prompts: list[str], method: str, input_name: str = "prompt", **knobs) -> list[dict]:
    """Row-format instances for `method`'s signature: every knob it takes, defaults filled.
    `input_name`: "prompt" (language models) or "source" (sequence-to-sequence models)."""
    if method not in SIGNATURE_KNOBS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(SIGNATURE_KNOBS)}")
    names = SIGNATURE_KNOBS[method]
    unknown = set(knobs) - set(names)
    if unknown:
        raise ValueError(f"{method} does not take {sorted(unknown)}; it takes {list(names)}")
    row = {name: knobs.get(name, KNOB_SPECS[name][1]) for name in names}
    return [{input_name: prompt, **row} for prompt in prompts]


class ServingClient:
    def __init__(self, url: str, model: str, version: int | None = None, timeout: float = 120) -> None:
        """`url`: http://host:port (TF Serving's REST port is 8501); ValueError without a scheme."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must start with http:// or https://, got {url!r} "
                             "(e.g. http://127.0.0.1:8501)")
        self.url = url
        self.base = f"{url.rstrip('/')}/v1/models/{model}" + (f"/versions/{version}" if version else "")
        self.timeout = timeout
        self._prompt_inputs: dict[str, str] = {}  # signature -> its strings input, from metadata

    def status(self) -> dict:
        return self._call("GET", self.base)

    def metadata(self) -> dict:
        return self._call("GET", self.base + "/metadata")

    def predict(self, signature: str, instances: list | None = None, inputs: dict | None = None) -> dict:
        body = {"signature_name": signature}
        body.update({"instances": instances} if instances is not None else {"inputs": inputs})
        return self._call("POST", self.base + ":predict", body)

    def generate(self, prompts: list[str], method: str = "top_p", **knobs) -> list[dict]:
        """One prediction per prompt (or source): text, token_ids, lengths, log_prob."""
        return self.predict(method, request_instances(prompts, method, self.prompt_input(method), **knobs))["predictions"]

    def prompt_input(self, method: str) -> str:
        """"source" when the model's `method` signature takes sources (seq2seq), else "prompt"
        (asked of the server's metadata once per client)."""
        if not self._prompt_inputs:
            defs = self.metadata()["metadata"]["signature_def"]["signature_def"]
            self._prompt_inputs = {name: "source" if "source" in d.get("inputs", {}) else "prompt"
                                   for name, d in defs.items()}
        return self._prompt_inputs.get(method, "prompt")

    def score(self, texts: list[str]) -> list[dict]:
        return self.predict("score", [{"text": t} for t in texts])["predictions"]

    def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except json.JSONDecodeError:
                message = text
            raise ServingError(err.code, message) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise ServerUnreachable(f"cannot reach the model server at {self.url}: {reason}") from None
