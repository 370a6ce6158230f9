"""The load part of bench/serve.py: concurrent clients against `lmpipe serve`, batching off
and on (once per `--batch-timeout-micros`), over REST and gRPC, in one run; and the time
to the first streamed token over SSE (`:generate_stream`) and over gRPC (Predict on
`stream_start`, as on TF Serving), each against one token's time: a lone 64-token request's latency on the same API / 64.

Each of 1, 4, 16 and 64 clients sends one-prompt greedy requests for exactly 64 new
tokens (min = max), one after another; printed per configuration: tokens/s over the
whole run, p50 and p99 request latency, and against the same server's lone request.
Then (`run_interleaved`, `--rounds`) the 16-client comparison again with the servers up
side by side, driven in turn, so that a host whose speed drifts between the sequential runs
(a shared machine: a lone request took 24 ms in one run and 86 ms in a later one) moves
both sides of every ratio alike.

Usage: python bench/serve.py --part load
"""

from __future__ import annotations

import re
import statistics
import threading
import time
import urllib.request

from serving.client import connect, request_instances

CLIENTS = (1, 4, 16, 64)
TOKENS = 64
def batching_flags(timeout_micros: int, threads: int, max_batch: int) -> tuple[str, ...]:
    return ("--set", "serve.batching.enabled=true", "--set", f"serve.batching.max_batch_size={max_batch}",
            "--set", f"serve.batching.batch_timeout_micros={timeout_micros}",
            "--set", f"serve.batching.num_batch_threads={threads}")


def drive(make_client, clients: int, requests_each: int) -> dict:
    """`clients` threads, each its own client sending `requests_each` requests in turn.
    Each client first opens its connection with one untimed request; the timed requests
    start together once every client is ready, so thread and connection start-up (tens of
    ms for 16 threads on 2 cores) is not counted, nor does it split the clients into
    groups that then reach the batcher apart."""
    latencies, lock = [], threading.Lock()
    instances = request_instances(["w1 w2 w3"], "greedy", max_new_tokens=TOKENS, min_new_tokens=TOKENS)
    ready = threading.Barrier(clients + 1)

    def client_loop(seed):
        client = make_client()
        try:
            client.predict("greedy", instances)
        finally:
            ready.wait()
        for _ in range(requests_each):
            started = time.perf_counter()
            answer = client.predict("greedy", instances)["predictions"][0]
            assert answer["lengths"] == TOKENS, answer
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"tokens_per_s": len(latencies) * TOKENS / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def batch_rows(rest_address: str) -> tuple[float, float]:
    """(rows, graph runs) of greedy so far, from the server's Prometheus metrics."""
    text = urllib.request.urlopen(rest_address + "/monitoring/prometheus/metrics", timeout=30).read().decode()
    totals = []
    for suffix in ("sum", "count"):
        match = re.search(r"processed_batch_size_" + suffix + r"\{[^}]*greedy[^}]*\} ([0-9.e+]+)", text)
        totals.append(float(match.group(1)) if match else 0.0)
    return totals[0], totals[1]


def first_token(events, repeats: int = 10) -> dict:
    """Time to the first streamed token against the whole stream (medians); `events()`
    starts one stream of TOKENS greedy tokens and yields its events."""
    firsts, wholes = [], []
    for _ in range(repeats + 1):  # the first stream warms up
        started = time.perf_counter()
        first = None
        for event in events():
            if "piece" in event and first is None:
                first = time.perf_counter() - started
        firsts.append(first)
        wholes.append(time.perf_counter() - started)
    return {"first": statistics.median(firsts[1:]), "whole": statistics.median(wholes[1:])}


def grpc_stream_start(port: int, repeats: int = 10) -> float:
    """The first token over TF Serving's own door: one Predict on `stream_start` through
    PredictionServiceStub, as a TF Serving user streams (its answer holds token and piece);
    the median seconds."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

    from serving.knobs import KNOB_SPECS
    from serving.stream import stream_start_inputs

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="lm", signature_name="stream_start"))
    inputs = stream_start_inputs(["w1 w2 w3"], "greedy", max_new_tokens=TOKENS, min_new_tokens=TOKENS)
    dtypes = {"prompt": tf.string, "method": tf.int32, **{k: v[0] for k, v in KNOB_SPECS.items()}}
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=dtypes[name]))
    seconds = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        stub.Predict(request, timeout=60)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def run_load(start_server, timeouts_micros=(10_000,), threads: int = 1, clients_list=CLIENTS,
             apis=("rest", "grpc"), max_batch: int = 16) -> None:
    """Batching off, then on at each of `timeouts_micros` (a batch waits that long to fill:
    the 16 closed-loop clients of this process reach the batcher spread over ~10-20 ms on 2
    cores, so a shorter timeout splits them into batches that run one after another)."""
    print(f"\nload: one-prompt greedy requests for {TOKENS} tokens; tokens/s, p50 / p99 latency (ms); "
          f"batching: max_batch_size {max_batch}, batch_timeout_micros {', '.join(map(str, timeouts_micros))}, "
          f"num_batch_threads {threads}")
    results = {}
    for timeout in (None, *timeouts_micros):
        server, url = start_server(*(batching_flags(timeout, threads, max_batch) if timeout is not None else ()))
        try:
            addresses = _addresses(server, url)
            if timeout is None:
                first_tokens(server, addresses)
            for api, address in [(a, addresses[a]) for a in apis]:
                make_client = _connector(address)
                drive(make_client, 4, 4)  # warm-up: graph runs of several batch sizes
                lone = drive(make_client, 1, 10)["p50"]
                results[timeout, api, "lone"] = lone
                for clients in clients_list:
                    rows, runs = batch_rows(addresses["rest"])
                    figures = drive(make_client, clients, max(4, 96 // clients))
                    rows, runs = (a - b for a, b in zip(batch_rows(addresses["rest"]), (rows, runs)))
                    results[timeout, api, clients] = figures
                    setting = "off         " if timeout is None else f"on {timeout / 1000:5.1f} ms"
                    print(f"  batching {setting} {api:4s} {clients:3d} clients: "
                          f"{figures['tokens_per_s']:8,.0f} tokens/s   p50 {figures['p50'] * 1e3:7.1f}   "
                          f"p99 {figures['p99'] * 1e3:7.1f}   p50 / lone {figures['p50'] / lone:5.2f}x "
                          f"(lone {lone * 1e3:.1f} ms; {rows / max(runs, 1):4.1f} rows per graph run)")
        finally:
            server.terminate()
            server.wait(timeout=60)
    for timeout in timeouts_micros:
        for api in apis:
            if (timeout, api, 16) not in results:
                continue
            on, off = results[timeout, api, 16], results[None, api, 16]
            print(f"  {api} at 16 clients, timeout {timeout / 1000:.1f} ms: batching on gives "
                  f"{on['tokens_per_s'] / off['tokens_per_s']:.2f}x the tokens/s of batching off; its p50 is "
                  f"{on['p50'] / results[timeout, api, 'lone']:.2f}x a lone request on the same server "
                  f"({on['p50'] / results[None, api, 'lone']:.2f}x a lone request with batching off, which does "
                  f"not wait batch_timeout_micros)")


def run_interleaved(start_server, timeouts_micros=(10_000,), threads: int = 1, apis=("rest", "grpc"),
                    max_batch: int = 16, rounds: int = 5, clients: int = 16) -> None:
    """The 16-client comparison with the servers up side by side: batching off and on at each
    timeout, driven in turn for `rounds` rounds, so that a machine whose speed drifts (a
    shared host's neighbours) moves both sides of each ratio; the median ratio is printed."""
    print(f"\ninterleaved: {clients} clients, batching off and on side by side, {rounds} rounds; "
          f"per round: tokens/s on / off, p50 on / a lone request on the same server")
    settings = (None, *timeouts_micros)
    servers = {t: start_server(*(batching_flags(t, threads, max_batch) if t is not None else ())) for t in settings}
    try:
        for api in apis:
            makers = {t: _connector(_addresses(server, url)[api]) for t, (server, url) in servers.items()}
            for make_client in makers.values():
                drive(make_client, 4, 4)  # warm-up: graph runs of several batch sizes
            ratios = {t: [] for t in timeouts_micros}
            for _ in range(rounds):
                off = drive(makers[None], clients, max(4, 96 // clients))
                for timeout in timeouts_micros:
                    lone = drive(makers[timeout], 1, 5)["p50"]
                    on = drive(makers[timeout], clients, max(4, 96 // clients))
                    ratios[timeout].append((on["tokens_per_s"] / off["tokens_per_s"], on["p50"] / lone))
            for timeout, pairs in ratios.items():
                print(f"  {api} at {clients} clients, timeout {timeout / 1000:.1f} ms: batching on gives "
                      f"{statistics.median(p[0] for p in pairs):.2f}x the tokens/s of batching off (rounds: "
                      f"{', '.join(f'{p[0]:.2f}' for p in pairs)}); p50 {statistics.median(p[1] for p in pairs):.2f}x "
                      f"a lone request on the same server (rounds: {', '.join(f'{p[1]:.2f}' for p in pairs)})")
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=60)


def _addresses(server, url: str) -> dict[str, str]:
    """A bench server's REST and gRPC addresses, by API."""
    return {"rest": url.split("/v1/")[0], "grpc": f"grpc://127.0.0.1:{server.grpc_port}"}


def _connector(address: str):
    """make_client for `drive`: a new client of the bench model at `address`."""
    return lambda: connect(address, "lm")


def first_tokens(server, addresses: dict) -> None:
    """Prints the first streamed token's time over SSE and over gRPC against one token's time."""
    print(f"  streaming, batching off; one token's time = a lone {TOKENS}-token greedy request's "
          f"latency / {TOKENS} (median of 10), on the same API of the same server, measured just before:")
    rest, grpc_client = connect(addresses["rest"], "lm"), connect(addresses["grpc"], "lm")
    knobs = {"max_new_tokens": TOKENS, "min_new_tokens": TOKENS}
    for door, client, events in [
            ("SSE :generate_stream", rest, lambda: rest.stream_sse(["w1 w2 w3"], "greedy", **knobs)),
            ("gRPC stream_start/next", grpc_client, lambda: grpc_client.stream(["w1 w2 w3"], "greedy", **knobs))]:
        drive(lambda: client, 1, 3)
        lone = drive(lambda: client, 1, 10)["p50"]
        ttft = first_token(events)
        line = (f"    {door:22s} first token {ttft['first'] * 1e3:5.2f} ms = "
                f"{ttft['first'] / (lone / TOKENS):4.2f}x one token's time ({lone / TOKENS * 1e3:.3f} ms; "
                f"lone request {lone * 1e3:.1f} ms); the whole stream {ttft['whole'] * 1e3:.0f} ms = "
                f"{ttft['whole'] / lone:.2f}x the lone request")
        if door.startswith("gRPC"):
            bare = grpc_stream_start(server.grpc_port)
            line += (f"\n    {'gRPC Predict stream_start':22s} first token {bare * 1e3:5.2f} ms = "
                     f"{bare / (lone / TOKENS):4.2f}x (PredictionServiceStub, one call, as on TF Serving)")
        print(line)
