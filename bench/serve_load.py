"""The load part of bench/serve.py: concurrent clients against `lmpipe serve`, batching off
and on, over REST and gRPC, in one run.

Each of 1, 4, 16 and 64 clients sends one-prompt greedy requests for exactly 64 new
tokens (min = max), one after another; printed per configuration: tokens/s over the
whole run, p50 and p99 request latency, and against the same server's lone request.

Usage: python bench/serve.py --part load
"""

from __future__ import annotations

import statistics
import threading
import time

from serving.client import connect, request_instances

CLIENTS = (1, 4, 16, 64)
TOKENS = 64
BATCHING = ("--set", "serve.batching.enabled=true", "--set", "serve.batching.max_batch_size=64",
            "--set", "serve.batching.batch_timeout_micros=2000")


def drive(make_client, clients: int, requests_each: int) -> dict:
    """`clients` threads, each its own client sending `requests_each` requests in turn."""
    latencies, lock = [], threading.Lock()
    instances = request_instances(["w1 w2 w3"], "greedy", max_new_tokens=TOKENS, min_new_tokens=TOKENS)

    def client_loop(seed):
        client = make_client()
        for _ in range(requests_each):
            started = time.perf_counter()
            answer = client.predict("greedy", instances)["predictions"][0]
            assert answer["lengths"] == TOKENS, answer
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"tokens_per_s": len(latencies) * TOKENS / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def run_load(start_server) -> None:
    print(f"\nload: one-prompt greedy requests for {TOKENS} tokens; tokens/s, p50 / p99 latency (ms)")
    results = {}
    for batching in (False, True):
        server, url = start_server(*(BATCHING if batching else ()))
        try:
            addresses = {"rest": url.split("/v1/")[0], "grpc": f"grpc://127.0.0.1:{server.grpc_port}"}
            for api, address in addresses.items():
                def make_client(address=address):
                    return connect(address, "lm")
                drive(make_client, 4, 4)  # warm-up: graph runs of several batch sizes
                lone = drive(make_client, 1, 10)["p50"]
                for clients in CLIENTS:
                    figures = drive(make_client, clients, max(2, 32 // clients))
                    results[batching, api, clients] = figures
                    print(f"  batching {'on ' if batching else 'off'} {api:4s} {clients:3d} clients: "
                          f"{figures['tokens_per_s']:8,.0f} tokens/s   p50 {figures['p50'] * 1e3:7.1f}   "
                          f"p99 {figures['p99'] * 1e3:7.1f}   p50 / lone {figures['p50'] / lone:5.2f}x "
                          f"(lone {lone * 1e3:.1f} ms)")
        finally:
            server.terminate()
            server.wait(timeout=60)
    for api in ("rest", "grpc"):
        on, off = results[True, api, 16], results[False, api, 16]
        print(f"  {api} at 16 clients: batching on gives {on['tokens_per_s'] / off['tokens_per_s']:.2f}x "
              f"the tokens/s of batching off")
