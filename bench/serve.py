"""How `lmpipe serve` holds up under heavy and hostile requests.

A Zaremba-small-shaped model (2x200 LSTM, 10k vocabulary, random weights) is exported
with lmpipe's own export and served by `lmpipe serve` in a subprocess. Measured, on the
server process:
- resident memory (VmRSS) idle, at its peak during a heavy request, and 2 s after it;
- the peak for the longest prompts a request may send (64 x 1,000 tokens, greedy and score);
- the latency of a status GET while the heavy request runs, against the same GET idle;
- how long each refused request takes to be answered, and the memory after them:
  a 20 MB prompt (body cap, 413), beam_width 2^31 - 1 (400), 64 prompts of 50,000
  characters (under the body cap; over export.max_prompt_tokens, refused in the graph),
  and the issue's heavy request (16 prompts x width 64 x 256 tokens: over the compute
  budget, 400).

The heavy request is the heaviest the default compute budget lets through: beam search,
4 prompts x width 64 x 256 new tokens (min_new_tokens = 256, so no early stop). With
`--budget N` the server takes a larger budget and the heavy request grows to match.

Usage: python bench/serve.py [--budget 65536]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from generate import make_model_dir  # noqa: E402  (bench/generate.py: the same model folder)

from serving.export import export_model  # noqa: E402
from serving.knobs import KNOB_SPECS  # noqa: E402
from trainer.distribute import free_local_ports  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(l for l in f if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def request(url: str, body: bytes | None = None, timeout: float = 3600) -> tuple[int, dict, float]:
    """(status, JSON, seconds) of a GET (no body) or POST."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read()), time.perf_counter() - started
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), time.perf_counter() - started


def predict_body(signature: str, prompts: list[str], **knobs) -> bytes:
    names = {"greedy": (), "beam_search": ("beam_width", "length_penalty")}[signature]
    row = {name: knobs.get(name, KNOB_SPECS[name][1])
           for name in ("max_new_tokens", "min_new_tokens", "repetition_penalty", "no_repeat_ngram_size", *names)}
    return json.dumps({"signature_name": signature, "instances": [{"prompt": p, **row} for p in prompts]}).encode()


def start_server(export_base: str, budget: int, *flags: str) -> tuple[subprocess.Popen, str]:
    """`lmpipe serve` (REST and gRPC; `flags`: more --set overrides): (process, model URL);
    the process's `grpc_port` attribute is its gRPC port."""
    port, grpc_port = free_local_ports(2)
    lmpipe = os.path.join(os.path.dirname(sys.executable), "lmpipe")
    server = subprocess.Popen([lmpipe, "serve", "--model-base-path", export_base, "--port", str(port),
                               "--grpc-port", str(grpc_port),
                               "--set", f"serve.compute_budget={budget}", *flags],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.grpc_port = grpc_port
    url = f"http://127.0.0.1:{port}/v1/models/lm"
    deadline = time.time() + 300
    while True:
        try:
            request(url, timeout=5)
            return server, url
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("lmpipe serve did not start")
            time.sleep(0.5)


def heavy_run(server, url: str, body: bytes) -> dict:
    """Sends `body` and, while it runs, samples the server's memory and status latency."""
    result, peak, waits = {}, 0.0, []

    def send():
        result["status"], result["json"], result["seconds"] = request(url + ":predict", body)

    thread = threading.Thread(target=send)
    thread.start()
    while thread.is_alive():
        peak = max(peak, rss_mb(server.pid))
        waits.append(request(url, timeout=60)[2])
        time.sleep(0.1)
    thread.join()
    return {"status": result["status"], "seconds": result["seconds"], "peak_mb": peak, "status_waits": waits,
            "error": result["json"].get("error")}


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        text = f.read()
    name = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "?")
    flags = [f for f in ("avx512_bf16", "amx_bf16") if f in text]
    return f"{name}, {os.cpu_count()} cores, bf16 flags: {', '.join(flags) or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=65_536, help="serve.compute_budget of the server")
    parser.add_argument("--part", choices=["all", "memory", "load"], default="all")
    parser.add_argument("--batch-timeout-micros", type=int, nargs="+", default=[10_000, 40_000],
                        help="load: serve.batching's timeouts, one batching-on run each")
    parser.add_argument("--batch-threads", type=int, default=1, help="load: serve.batching.num_batch_threads")
    parser.add_argument("--max-batch-size", type=int, default=16, help="load: serve.batching.max_batch_size")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="load: client counts")
    parser.add_argument("--apis", nargs="+", default=["rest", "grpc"], choices=["rest", "grpc"])
    parser.add_argument("--rounds", type=int, default=5,
                        help="load: rounds of the side-by-side 16-client comparison (0: none)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, _ = make_model_dir(tmp)
        export_model(model_dir, os.path.join(tmp, "export"), "lm", max_new_tokens=256)
        base = os.path.join(tmp, "export", "lm")
        if args.part in ("all", "memory"):
            server, url = start_server(base, args.budget)
            try:
                run(server, url, args.budget)
            finally:
                server.terminate()
                server.wait(timeout=60)
        if args.part in ("all", "load"):
            from serve_load import run_interleaved, run_load  # bench/serve_load.py

            start = lambda *flags: start_server(base, args.budget, *flags)  # noqa: E731
            run_load(start, args.batch_timeout_micros, args.batch_threads, args.clients, args.apis,
                     args.max_batch_size)
            if args.rounds:
                run_interleaved(start, args.batch_timeout_micros, args.batch_threads, args.apis,
                                args.max_batch_size, args.rounds)


def run(server, url: str, budget: int) -> None:
    request(url + ":predict", predict_body("greedy", ["w1 w2"], max_new_tokens=8))  # first request
    idle = [request(url)[2] for _ in range(20)]
    idle_ms = statistics.median(idle) * 1e3
    before = rss_mb(server.pid)
    print(f"idle: resident {before:,.0f} MB; status GET median {idle_ms:.1f} ms")

    prompts = max(1, budget // (64 * 256))
    body = predict_body("beam_search", ["w1 w2 w3"] * prompts, beam_width=64, max_new_tokens=256, min_new_tokens=256)
    for attempt in (1, 2):  # the second shows whether what stays resident is a one-time cache
        heavy = heavy_run(server, url, body)
        time.sleep(2)
        after = rss_mb(server.pid)
        during_ms = statistics.median(heavy["status_waits"]) * 1e3
        print(f"heavy request {attempt} (beam_search, {prompts} prompts x width 64 x 256 tokens = "
              f"{prompts * 64 * 256:,} token steps): HTTP {heavy['status']} in {heavy['seconds']:.1f} s")
        print(f"  resident peak {heavy['peak_mb']:,.0f} MB ({heavy['peak_mb'] / before:.2f}x idle), "
              f"2 s after {after:,.0f} MB ({after / before:.2f}x idle)")
        print(f"  status GET while it ran: median {during_ms:.1f} ms, max {max(heavy['status_waits']) * 1e3:.1f} ms "
              f"over {len(heavy['status_waits'])} GETs ({during_ms / idle_ms:.2f}x idle)")

    long_prompt = " ".join(f"w{i % 9000 + 10}" for i in range(1000))  # 1,000 tokens: under the limit
    for what, body in [
        ("greedy, 64 prompts x 1,000 tokens", predict_body("greedy", [long_prompt] * 64, max_new_tokens=8)),
        ("score, 64 texts x 1,000 tokens", json.dumps({"signature_name": "score",
                                                       "instances": [{"text": long_prompt}] * 64}).encode()),
    ]:
        heavy = heavy_run(server, url, body)
        print(f"largest prompts {what}: HTTP {heavy['status']} in {heavy['seconds']:.1f} s, resident peak "
              f"{heavy['peak_mb']:,.0f} MB ({heavy['peak_mb'] / before:.2f}x idle)")

    refused = [
        ("20 MB prompt", predict_body("greedy", ["w1 " * 6_666_667])),
        ("beam_width 2^31 - 1", predict_body("beam_search", ["w1"], beam_width=2**31 - 1)),
        ("64 prompts of 50,000 chars", predict_body("greedy", [("w1 w22 " * 7200)[:50_000]] * 64)),
        ("16 x width 64 x 256 tokens", predict_body("beam_search", ["w1"] * 16, beam_width=64, max_new_tokens=256)),
    ]
    for what, body in refused:
        try:
            status, answer, seconds = request(url + ":predict", body)
        except urllib.error.URLError as err:
            status, answer, seconds = "closed", {"error": str(err.reason)}, float("nan")
        print(f"refused {what:28s} HTTP {status} in {seconds * 1e3:7.1f} ms, resident {rss_mb(server.pid):,.0f} MB: "
              f"{answer.get('error', '')[:110]}")
    print(f"server alive after all: {server.poll() is None}")


if __name__ == "__main__":
    main()
