"""Cost of the streamed activation collection against a bare Hugging Face forward over the same batches.

What is timed (same model object, same machine, same length-sorted batches, one process):

* **collection**: `sn.collect_activations(model, prompts, rows_at=[(site, layer)])`, i.e. float64 Welford
  statistics of `act` (`mlp.hook_post`) at every layer plus the per-prompt rows of one (site, layer);
  this includes the chat templating / tokenisation and the CPU-side statistics updates, and the
  forward stops at the last hook it needs (no last down-projection, final norm or LM head);
* **HF forward**: `model.original_model(input_ids, attention_mask=..., position_ids=...)` under
  `torch.no_grad()`: the full causal LM, logits at every position (what a plain forward computes);
* **HF decoder**: `model.original_model.model(...)`: the same without the LM head (the fair
  reference for a pass that never needs logits);
* **tokenisation** alone (`length_sorted_batches`), the part of the collection that is not a forward;
* optionally (`--plain-hf`) the full forward of a separately loaded, unwrapped HF copy of the same
  weights: `original_model` is the HF module tree with TransformerLens bridge components (hook
  points, no hooks attached) inserted, so this shows what, if anything, the wrapping itself costs.

The variants are interleaved (one of each per repetition, order rotated every repetition) after one
untimed warm-up call of each; medians are reported, and the ratios both as ratios of medians and
as medians of the per-repetition (paired) ratios, which are robust to drifting machine load.

    python benchmarks/collection_overhead.py            # Qwen2.5-Coder-0.5B, 64 prompts, batch 16, 5 reps
    python benchmarks/collection_overhead.py --quick    # SmolLM2-135M, 8 prompts, batch 4, 2 reps
"""

from __future__ import annotations

import argparse
import time

import torch

import _common as C

QUICK = dict(model=C.SMALL_MODEL, prompts=8, batch_size=4, repeats=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"small smoke run: {QUICK}")
    ap.add_argument("--model", default=C.MODEL)
    ap.add_argument("--prompts", type=int, default=64, help="number of chat prompts (balanced over languages)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions of each variant (after a warm-up)")
    ap.add_argument("--rows-site", default="mlp_in", help="site of the per-prompt rows collected")
    ap.add_argument("--rows-layer", type=int, default=None, help="layer of the rows (default: n_layers // 2)")
    ap.add_argument("--plain-hf", action="store_true", help="also time an unwrapped HF copy (loads the weights twice)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            if ap.get_default(k) == getattr(args, k):
                setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)

    import safety_neurons as sn
    from safety_neurons.chat import length_sorted_batches

    C.print_machine("collection overhead")
    t0 = time.perf_counter()
    model = C.load_model(args.model)
    load_s = time.perf_counter() - t0
    cfg = model.cfg
    layer = cfg.n_layers // 2 if args.rows_layer is None else args.rows_layer
    prompts = C.bench_prompts(args.prompts)
    texts = [p.text for p in prompts]
    batches = [b for _, b in length_sorted_batches(model.tokenizer, texts, args.batch_size)]
    real = sum(int(b.attention_mask.sum()) for b in batches)
    padded = sum(b.input_ids.numel() for b in batches)
    print(
        f"model     {args.model}: {cfg.n_layers} layers, d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, "
        f"{model.original_model.dtype}, attention {model.original_model.config._attn_implementation} "
        f"(loaded in {load_s:.1f} s)"
    )
    print(
        f"workload  {len(prompts)} prompts in {len(batches)} batches of ≤ {args.batch_size}: {real} tokens "
        f"({padded} with padding; widest batch {max(b.input_ids.shape[1] for b in batches)})"
    )
    print(f"collect   statistics of 'act' at all {cfg.n_layers} layers + rows ({args.rows_site!r}, {layer})")
    print(f"repeats   {args.repeats} timed (+1 warm-up) of each variant, interleaved\n")

    hf = model.original_model

    def collect():
        sn.collect_activations(
            model, prompts, rows_at=[(args.rows_site, layer)], batch_size=args.batch_size, progress=False
        )

    @torch.no_grad()
    def forward():
        for b in batches:
            hf(b.input_ids, **b.model_kwargs())

    @torch.no_grad()
    def decoder():
        for b in batches:
            hf.model(b.input_ids, **b.model_kwargs())

    def tokenise():
        list(length_sorted_batches(model.tokenizer, texts, args.batch_size))

    variants = {
        "collection": collect,
        "HF forward": forward,
        "HF decoder (no LM head)": decoder,
        "tokenisation only": tokenise,
    }
    if args.plain_hf:
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(
            hf.config._name_or_path, dtype=hf.dtype, attn_implementation=hf.config._attn_implementation
        ).eval()

        @torch.no_grad()
        def plain_forward():
            for b in batches:
                plain(b.input_ids, **b.model_kwargs())

        variants["plain HF copy forward"] = plain_forward

    names = list(variants)
    for name in names:  # warm-up
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(C.timed(variants[name]))
        print(f"  rep {r + 1}/{args.repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), flush=True)
    print()

    med = {n: C.median(t) for n, t in times.items()}
    coll = times["collection"]
    rows = []
    for name in names:
        if name == "tokenisation only":  # part of the collection, not an alternative to it
            rows.append(
                [name, med[name], min(times[name]), max(times[name]), 1e3 * med[name] / len(prompts), "-", "-", "-"]
            )
            continue
        paired = C.median([c / t for c, t in zip(coll, times[name])])
        rows.append(
            [
                name,
                med[name],
                min(times[name]),
                max(times[name]),
                1e3 * med[name] / len(prompts),
                f"{med['collection'] / med[name]:.3f}×",
                f"{paired:.3f}×",
                f"{min(coll) / min(times[name]):.3f}×",
            ]
        )
    print(C.table(["variant", "median s", "min s", "max s", "ms/prompt", "coll / this", "paired", "of mins"], rows))
    print("\n'coll / this': ratio of medians; 'paired': median over repetitions of the per-repetition ratio;")
    print("'of mins': ratio of the fastest runs (least disturbed by other load on the machine).")
    print(f"Collection includes tokenisation ({med['tokenisation only']:.3f} s) and float64 statistics on the CPU.")

    r_fwd = med["collection"] / med["HF forward"]
    r_dec = med["collection"] / med["HF decoder (no LM head)"]
    print()
    C.headline(
        "collection / HF forward",
        f"{r_fwd:.3f}× ({target_word(r_fwd)} the ≤ 1.10× target; {med['collection']:.2f} s vs "
        f"{med['HF forward']:.2f} s, {args.model}, {len(prompts)} prompts, batch {args.batch_size})",
    )
    C.headline("collection / HF decoder without LM head", f"{r_dec:.3f}× ({target_word(r_dec)} the ≤ 1.10× target)")
    C.headline("collection time per prompt", f"{1e3 * med['collection'] / len(prompts):.1f} ms")
    if args.plain_hf:
        C.headline("wrapped / plain HF forward", f"{med['HF forward'] / med['plain HF copy forward']:.3f}×")


def target_word(ratio: float) -> str:
    return "within" if ratio <= 1.10 else "OVER"


if __name__ == "__main__":
    main()
