"""Greedy generation through the bridge against plain HF generation, same weights, prompts and batches.

    python benchmarks/generation_overhead.py [--prompts 16] [--tokens 24] [--repeats 2]

Both sides run `generate` with a KV cache on the same left-padded, length-sorted batches; the plain model
is a fresh `AutoModelForCausalLM` loaded from the same cached folder (sdpa attention, as HF defaults to).
Repetitions interleave the two sides; medians are compared. The answers must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import safety_neurons as sn
from safety_neurons.chat import length_sorted_batches

import _common as C


def timed_generate(hf, tok, texts, tokens: int, batch_size: int) -> tuple[float, list[list[int]]]:
    out = []
    start = time.perf_counter()
    with torch.no_grad():
        for _, batch in length_sorted_batches(tok, texts, batch_size):
            ids = hf.generate(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                top_p=None,
                top_k=None,
                temperature=None,
            )
            out += ids[:, batch.input_ids.shape[1] :].tolist()
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=C.MODEL)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from transformers import AutoModelForCausalLM

    bridge = C.load_model(args.model)
    folder = sn.models._resolve(args.model)  # the cached HF folder the bridge was loaded from
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = bridge.tokenizer
    texts = [q.text for q in C.split("test", label="harmful", limit=2)][: args.prompts]
    sides = {"bridge": bridge.original_model, "plain HF": plain}
    for hf in sides.values():  # warm-up
        timed_generate(hf, tok, texts[:2], 2, args.batch_size)
    times = {k: [] for k in sides}
    answers = {}
    for _ in range(args.repeats):
        for name, hf in sides.items():
            t, answers[name] = timed_generate(hf, tok, texts, args.tokens, args.batch_size)
            times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{len(texts)} prompts × {args.tokens} tokens, batch {args.batch_size}, {args.repeats} interleaved repeats, "
        f"{torch.get_num_threads()} threads; attention: bridge {bridge.original_model.config._attn_implementation}, "
        f"plain {plain.config._attn_implementation}"
    )
    for k in sides:
        print(f"  {k:>9}: median {med[k]:.1f} s  ({', '.join(f'{t:.1f}' for t in times[k])})")
    print(
        f"  bridge / plain HF: {med['bridge'] / med['plain HF']:.3f}×; identical answers: "
        f"{answers['bridge'] == answers['plain HF']}"
    )


if __name__ == "__main__":
    main()
