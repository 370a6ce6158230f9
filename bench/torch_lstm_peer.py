"""PyTorch's nn.LSTM in lstm_speed.py's model and step, in a process of its own (torch and
TensorFlow in one process crash: their OpenMP and oneDNN runtimes collide).

The step: embedding, 2-layer nn.LSTM (oneDNN on CPU), 10k linear + cross-entropy summed
over the window and averaged over the batch, backward, clip_grad_norm_ 5, SGD lr 1;
weights uniform in [-0.1, 0.1]. Prints {"tokens_per_s": ...} as JSON.

Usage: python bench/torch_lstm_peer.py --hidden 200 --steps 20 [--vocab 10000 --batch 20 --bptt 35]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


class TorchLM(torch.nn.Module):
    """Embedding -> 2-layer nn.LSTM -> linear, as lmpipe's untied LanguageModel."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, hidden)
        self.lstm = torch.nn.LSTM(hidden, hidden, num_layers=2, batch_first=True)
        self.output = torch.nn.Linear(hidden, vocab)

    def forward(self, x, state):
        out, state = self.lstm(self.embedding(x), state)
        return self.output(out), state


def training_rate(vocab: int, hidden: int, batch: int, bptt: int, steps: int) -> float:
    """Training tokens/s of `steps` steps after 3 warm-up ones."""
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    model = TorchLM(vocab, hidden)
    for p in model.parameters():
        torch.nn.init.uniform_(p, -0.1, 0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, (batch, bptt)))
    state = (torch.zeros(2, batch, hidden), torch.zeros(2, batch, hidden))

    def step(state):
        state = tuple(s.detach() for s in state)
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x.reshape(-1), reduction="sum") / batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return state

    for _ in range(3):
        state = step(state)
    start = time.perf_counter()
    for _ in range(steps):
        state = step(state)
    return batch * bptt * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    args = parser.parse_args()
    rate = training_rate(args.vocab, args.hidden, args.batch, args.bptt, args.steps)
    print(json.dumps({"tokens_per_s": rate, "torch": torch.__version__,
                      "mkldnn": torch.backends.mkldnn.is_available()}))


if __name__ == "__main__":
    main()
