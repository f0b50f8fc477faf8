"""``python -m decoding.evals.verification_cost``: where a verification forward's time goes on this machine.

For a target (a registry name, a folder or a GGUF file), with a cache of ``--cache`` tokens and one row: the
seconds of one forward over ``n`` new tokens, ``t(n)``, and ``v(n) = t(n) / t(1)`` (the cost ratio of the
speculative ceiling), with the linear layers as the library runs them (``W @ h^T`` for a few rows on a CPU) and as
``F.linear`` (``DECODING_FEW_ROWS=linear``); then one layer of each shape alone, both ways (its weights stay in
cache there, unlike in a forward: the forward is the figure that counts). Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from decoding.few_rows import ENV, few_rows_linear
from decoding.ragged_cache import RaggedCache


def forward_ms(model, prefix: torch.Tensor, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        cache = RaggedCache(model, 1, prefix.device)
        cache.forward(prefix, torch.ones_like(prefix), 1)
        ids = prefix[:, -n:]
        started = time.perf_counter()
        cache.forward(ids, torch.ones_like(ids), n)
        times.append(time.perf_counter() - started)
    return 1e3 * sorted(times)[len(times) // 2]


def layer_ms(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - started) / repeats


@torch.no_grad()
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoding.evals.verification_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--cache", type=int, default=100, help="tokens already cached (default 100)")
    parser.add_argument("--tokens", default="1,2,3,4,5", help="new tokens per forward (default 1,2,3,4,5)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from decoding.model_pairs.gguf import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(args.target)
    model.eval()
    vocab = model.config.get_text_config().vocab_size
    prefix = torch.randint(min(100, vocab // 2), vocab, (1, args.cache), generator=torch.Generator().manual_seed(0))
    counts = [int(n) for n in args.tokens.split(",")]
    for setting in ("auto", "linear"):
        os.environ[ENV] = setting
        ms = {n: forward_ms(model, prefix, n, args.repeats) for n in counts}
        ratios = ", ".join(f"t({n}) {ms[n]:.1f} ms v {ms[n] / ms[1]:.2f}" for n in counts)
        print(f"forward, linear layers {'W @ h^T' if setting == 'auto' else 'F.linear'}: {ratios}")
    os.environ.pop(ENV)
    shapes = {}
    for layer in model.modules():
        if type(layer) is torch.nn.Linear:
            shapes.setdefault(tuple(layer.weight.shape), layer)
    for (out_features, in_features), layer in shapes.items():
        for n in counts:
            x = torch.randn(1, n, in_features)
            print(f"layer {out_features} x {in_features} alone, {n} row(s): "
                  f"F.linear {layer_ms(lambda: F.linear(x, layer.weight), args.repeats):.3f} ms, "
                  f"as the library runs it {layer_ms(lambda: few_rows_linear(layer, x), args.repeats):.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
