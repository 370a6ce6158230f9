"""The load part of bench/serve.py: concurrent clients against `lmpipe serve`, batching off
and on, over REST and gRPC, in one run; and the time to the first streamed token (SSE).

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
def batching_flags(timeout_micros: int, threads: int, max_batch: int) -> tuple[str, ...]:
    return ("--set", "serve.batching.enabled=true", "--set", f"serve.batching.max_batch_size={max_batch}",
            "--set", f"serve.batching.batch_timeout_micros={timeout_micros}",
            "--set", f"serve.batching.num_batch_threads={threads}")


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


def first_token(client, repeats: int = 10) -> dict:
    """Time to the first streamed token (lmpipe serve's SSE) against the whole request."""
    firsts, wholes = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for event in client.stream_sse(["w1 w2 w3"], "greedy", max_new_tokens=TOKENS, min_new_tokens=TOKENS):
            if "piece" in event and len(firsts) < len(wholes) + 1:
                firsts.append(time.perf_counter() - started)
        wholes.append(time.perf_counter() - started)
    return {"first": statistics.median(firsts), "whole": statistics.median(wholes)}


def run_load(start_server, timeout_micros: int = 10_000, threads: int = 1, clients_list=CLIENTS,
             apis=("rest", "grpc"), max_batch: int = 16) -> None:
    print(f"\nload: one-prompt greedy requests for {TOKENS} tokens; tokens/s, p50 / p99 latency (ms); "
          f"batching: max_batch_size {max_batch}, batch_timeout_micros {timeout_micros}, num_batch_threads {threads}")
    results = {}
    for batching in (False, True):
        server, url = start_server(*(batching_flags(timeout_micros, threads, max_batch) if batching else ()))
        try:
            addresses = {"rest": url.split("/v1/")[0], "grpc": f"grpc://127.0.0.1:{server.grpc_port}"}
            if not batching:
                client = connect(addresses["rest"], "lm")
                lone = drive(lambda: client, 1, 10)["p50"]
                ttft = first_token(client)
                print(f"  streaming (SSE, batching off): first token after {ttft['first'] * 1e3:.1f} ms = "
                      f"{ttft['first'] / (lone / TOKENS):.2f}x one token's time ({lone / TOKENS * 1e3:.2f} ms, "
                      f"from a lone {TOKENS}-token request); the whole stream {ttft['whole'] * 1e3:.0f} ms = "
                      f"{ttft['whole'] / lone:.2f}x the one-shot request ({lone * 1e3:.0f} ms)")
            for api, address in [(a, addresses[a]) for a in apis]:
                def make_client(address=address):
                    return connect(address, "lm")
                drive(make_client, 4, 4)  # warm-up: graph runs of several batch sizes
                lone = drive(make_client, 1, 10)["p50"]
                for clients in clients_list:
                    figures = drive(make_client, clients, max(2, 32 // clients))
                    results[batching, api, clients] = figures
                    print(f"  batching {'on ' if batching else 'off'} {api:4s} {clients:3d} clients: "
                          f"{figures['tokens_per_s']:8,.0f} tokens/s   p50 {figures['p50'] * 1e3:7.1f}   "
                          f"p99 {figures['p99'] * 1e3:7.1f}   p50 / lone {figures['p50'] / lone:5.2f}x "
                          f"(lone {lone * 1e3:.1f} ms)")
        finally:
            server.terminate()
            server.wait(timeout=60)
    for api in apis:
        if (True, api, 16) not in results:
            continue
        on, off = results[True, api, 16], results[False, api, 16]
        print(f"  {api} at 16 clients: batching on gives {on['tokens_per_s'] / off['tokens_per_s']:.2f}x "
              f"the tokens/s of batching off")
