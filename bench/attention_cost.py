"""What attention costs on this CPU for the ways the bench sides lay a micro-batch out, forward + backward.

    python bench/attention_cost.py               # the bench model's attention: 8 heads of 64, 6 layers
    python bench/attention_cost.py --batches 20  # more sampled micro-batches
    python bench/attention_cost.py --threads 1   # steady numbers while other programs share the cores

A micro-batch of 8 chats (lengths drawn like bench/throughput.py's) is laid out as
  one-row      all 8 in one row with a block-diagonal causal mask (lorakit and TRL `padding_free` on sdpa:
               transformers builds a dense (L x L) boolean mask from the per-example position ids)
  rows-1025    rows of cutoff_len + 1 = 1025 with a 4-D block-diagonal float mask (LLaMA-Factory `neat_packing`)
  padded       8 rows padded to the longest, causal + padding mask (TRL defaults)
  per-example  each chat alone, `is_causal=True`, no mask (what a varlen kernel computes: no cross-example work)
and each layout's attention (scaled_dot_product_attention, the only part that changes) is timed forward and
backward, times the layers and a recomputation for gradient checkpointing (so: 2 forwards + 1 backward per layer).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time


def sample_lengths(rng: random.Random, n: int, max_words: int = 400) -> list[int]:
    # bench/throughput.py's chats: log-uniform 20..max_words words, ~1.45 tokens a word with the ChatML frame
    return [int(20 * (max_words / 20) ** rng.random() * 1.45) + 10 for _ in range(n)]


def timed(fn, repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def attention_step(q_len_rows: list[tuple[int, object]], heads: int, head_dim: int, layers: int, causal_only=False):
    """Seconds for `layers` x (2 forwards + 1 backward) of SDPA over the given rows."""
    import torch
    import torch.nn.functional as F

    def run():
        for rows, mask in q_len_rows:
            b, length = rows
            q = torch.randn(b, heads, length, head_dim, requires_grad=True)
            k = torch.randn(b, heads, length, head_dim, requires_grad=True)
            v = torch.randn(b, heads, length, head_dim, requires_grad=True)
            with torch.no_grad():  # the checkpointed forward
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
            out.sum().backward()

    return timed(run) * layers


def block_mask(lengths: list[int], total: int, dtype=None):
    import torch

    ids = torch.cat([torch.full((n,), i + 1) for i, n in enumerate(lengths)]
                    + [torch.zeros(total - sum(lengths), dtype=torch.long)])
    allowed = (ids[:, None] == ids[None, :]) & (ids[None, :] != 0) & torch.ones(total, total).tril().bool()
    if dtype is None:
        return allowed[None, None]
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]


def greedy_rows(lengths: list[int], cutoff: int) -> list[list[int]]:
    rows: list[list[int]] = []
    for n in sorted(lengths, reverse=True):
        for row in rows:
            if sum(row) + n <= cutoff:
                row.append(n)
                break
        else:
            rows.append([n])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (1 gives steady numbers on a shared machine)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    rng = random.Random(args.seed)
    h, d, n_layers = args.heads, args.head_dim, args.layers
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {h} heads x {d}, {n_layers} layers, "
          f"2 forwards + 1 backward per layer (gradient checkpointing)")
    print("\nsingle causal row, no mask vs dense block mask (one example per row / the whole row one block):")
    for length in (256, 512, 1024, 1536, 2048):
        causal = attention_step([((1, length), None)], h, d, n_layers)
        masked = attention_step([((1, length), block_mask([length], length))], h, d, n_layers)
        print(f"  L={length:5d}  is_causal {causal * 1e3:7.1f} ms   bool mask {masked * 1e3:7.1f} ms   "
              f"({masked / causal:.1f}x)")
    totals: dict[str, list[float]] = {k: [] for k in ("one-row", "rows-1025", "padded", "per-example")}
    tokens = []
    for _ in range(args.batches):
        lengths = sample_lengths(rng, args.batch)
        total = sum(lengths)
        tokens.append(total)
        totals["one-row"].append(attention_step([((1, total), block_mask(lengths, total))], h, d, n_layers))
        rows = greedy_rows(lengths, args.cutoff)
        lf = [((1, args.cutoff + 1), block_mask(r, args.cutoff + 1, torch.float32)) for r in rows]
        totals["rows-1025"].append(attention_step(lf, h, d, n_layers))
        longest = max(lengths)
        pad = torch.zeros(len(lengths), 1, longest, longest, dtype=torch.bool)
        for i, n in enumerate(lengths):
            pad[i, 0, :n, :n] = torch.ones(n, n).tril().bool()
            pad[i, 0, n:, 0] = True  # padding queries see one key (as transformers does), so no NaN
        totals["padded"].append(attention_step([((len(lengths), longest), pad)], h, d, n_layers))
        totals["per-example"].append(attention_step([((1, n), None) for n in lengths], h, d, n_layers))
    mean_tokens = statistics.mean(tokens)
    print(f"\nmicro-batches of {args.batch} chats (mean {mean_tokens:.0f} tokens), attention per optimizer step "
          f"(all layers), mean of {args.batches}:")
    base = statistics.mean(totals["per-example"])
    for name, values in totals.items():
        mean = statistics.mean(values)
        print(f"  {name:12s} {mean * 1e3:8.1f} ms   {mean * 1e6 / mean_tokens:7.1f} us/token   "
              f"{mean / base:5.2f}x per-example")


if __name__ == "__main__":
    main()
