"""The pipeline's cost on a 7-8B model shape on one GPU: collection, ranking, closed-form solve, apply.

No download: a model of Llama-3-8B shape (default) or Qwen2.5-7B shape (`--shape qwen2.5-7b`) is built
from its config with random weights directly on the GPU (`torch.device("cuda")` + `from_config`, bf16)
and wrapped with `sn.bridge_from_hf`. Token ids come from a packaged tokenizer whose vocabulary fits
the model's (SmolLM2's 49,152 tokens for the Llama shape, Qwen2.5's 151,665 for the Qwen shape), and
the prompts are the bundled chat prompts, repeated with fresh ids to reach `--prompts`. Random weights
compute exactly as much as trained ones, so the times are those of the real model (the selected neuron
counts are not meaningful).

Timed, in order (CUDA synchronised around each):

1. `collect_activations`: float64 statistics of `act` at every layer (every neuron) + the rows of
   `mlp_in` at the edit layer, over `--prompts` prompts in length-sorted batches of `--batch-size`;
   a bare HF decoder forward (`original_model.model`, no LM head) over the same batches for reference;
2. `rank_neurons` on those statistics (z > 2 or Cohen's d > 1 per language and layer);
3. `solve_edit` of the paper's gate edit at the edit layer: X = MLP inputs of the non-English harmful
   prompts, D = (X_en − X) @ W_gate[:, S] for the top `--edit-neurons` English neurons S, X_safe = the
   harmless prompts, rank 32 (float64 on the CPU, as always);
4. `fit_edit` (same edit end to end from the collected rows), then `WeightEdit.apply` and `revert`.

The collection runs once (after a one-batch warm-up; `--repeats` for more); the cheaper steps run
after a warm-up call, `--repeats` times (median). The companion paper reports ~40 s to identify the
safety neurons of a 7B model.

    python benchmarks/gpu_scale.py                      # Llama-3-8B shape, 1,000 prompts, batch 32 (H100: < 5 min)
    python benchmarks/gpu_scale.py --shape qwen2.5-7b
    python benchmarks/gpu_scale.py --quick              # 256 prompts
    python benchmarks/gpu_scale.py --cpu --tiny         # a tiny config on the CPU: exercises the code path only
    python benchmarks/gpu_scale.py --n-devices 2        # the two-GPU variant: the layers split over 2 GPUs

The two-GPU variant builds the random model on the CPU, splits its layers over the GPUs with accelerate
(`infer_auto_device_map` + `dispatch_model`, balanced, a decoder layer never split) and wraps it with
`bridge_from_hf(..., device=None)`, as `load_model(..., n_devices=2)` would for a checkpoint: each layer's
statistics then accumulate on that layer's GPU. It reports the peak memory of every GPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import _common as C

SHAPES = {
    "llama3-8b": dict(
        arch="llama",
        tokenizer="smollm2-135m-instruct",
        config=dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2.5-7b": dict(
        arch="qwen2",
        tokenizer="qwen2.5-coder-0.5b-instruct",
        config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
    ),
}
TINY = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)


def build_config(shape: str, tiny: bool, attn: str):
    from transformers import LlamaConfig, Qwen2Config

    spec = SHAPES[shape]
    kwargs = {**spec["config"], **(TINY if tiny else {})}
    if spec["arch"] == "llama":
        cfg, arch = LlamaConfig(**kwargs), "LlamaForCausalLM"
    else:
        cfg, arch = Qwen2Config(**kwargs), "Qwen2ForCausalLM"
    cfg.architectures = [arch]
    cfg._attn_implementation = attn
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="llama3-8b")
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--edit-layer", type=int, default=None, help="default: 3/4 of the depth")
    ap.add_argument("--edit-neurons", type=int, default=1024, help="|S|: top English neurons by z at the edit layer")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="repetitions of the cheap steps (median)")
    ap.add_argument("--collect-repeats", type=int, default=1, help="repetitions of the collection (median)")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="HF attention implementation")
    ap.add_argument("--tokenizer", default=None, help="packaged model whose tokenizer to use (default per shape)")
    ap.add_argument("--quick", action="store_true", help="256 prompts (with --cpu --tiny: 32)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (only sensible with --tiny)")
    ap.add_argument("--tiny", action="store_true", help=f"tiny config {TINY}: checks the code path, times nothing real")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare HF decoder reference pass")
    ap.add_argument("--n-devices", type=int, default=1, help="split the layers over this many GPUs (default 1)")
    args = ap.parse_args()
    if args.n_devices > 1 and (args.cpu or torch.cuda.device_count() < args.n_devices):
        sys.exit(f"--n-devices {args.n_devices} needs that many CUDA GPUs; {torch.cuda.device_count()} visible")

    if not args.cpu and not torch.cuda.is_available():
        sys.exit(
            f"gpu_scale.py needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}). Run it on a GPU machine, or use --cpu --tiny to check "
            "the code path on the CPU."
        )
    if args.cpu and not args.tiny:
        print(
            "warning: --cpu without --tiny builds the full-size model on the CPU (~32 GB in float32)", file=sys.stderr
        )
    if args.tiny and args.prompts == ap.get_default("prompts"):
        args.prompts, args.batch_size = 32, min(args.batch_size, 8)
        args.edit_neurons = min(args.edit_neurons, 32)
    elif args.quick and args.prompts == ap.get_default("prompts"):
        args.prompts = 256
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.cpu else torch.bfloat16)
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else None

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import safety_neurons as sn
    from safety_neurons.chat import length_sorted_batches
    from safety_neurons.models import materialise_packaged

    C.print_machine("pipeline at 7-8B scale")
    if on_gpu:
        props = torch.cuda.get_device_properties(0)
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB\n")
    t_all = time.perf_counter()
    steps: list[list] = []

    def step(name, seconds, note=""):
        steps.append([name, seconds, note])
        print(f"  {name:<44} {seconds:9.3f} s  {note}", flush=True)

    # --- model ----------------------------------------------------------------------------------
    tok_name = args.tokenizer or SHAPES[args.shape]["tokenizer"]
    tokenizer = AutoTokenizer.from_pretrained(materialise_packaged(tok_name))
    cfg = build_config(args.shape, args.tiny, args.attn)
    if len(tokenizer) > cfg.vocab_size:
        sys.exit(
            f"the {tok_name} tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary "
            f"({cfg.vocab_size}): token ids could fall out of range; pick another --tokenizer"
        )
    torch.manual_seed(0)
    t = time.perf_counter()
    split = args.n_devices > 1
    with torch.device("cpu" if split else device):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if split:
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        no_split = [type(hf.model.layers[0]).__name__]
        budget = get_balanced_memory(
            hf,
            max_memory={i: torch.cuda.mem_get_info(i)[0] for i in range(args.n_devices)},
            no_split_module_classes=no_split,
            dtype=dtype,
        )
        device_map = infer_auto_device_map(hf, max_memory=budget, no_split_module_classes=no_split, dtype=dtype)
        hf = dispatch_model(hf, device_map=device_map)
        print(
            f"layers per GPU: { {d: sum(1 for k, v in device_map.items() if v == d and '.layers.' in k) for d in set(device_map.values())} }"
        )
    if sync:
        sync()
    n_params = sum(p.numel() for p in hf.parameters())
    step(
        "build random model (from_config)" + (f", split over {args.n_devices} GPUs" if split else ""),
        time.perf_counter() - t,
        f"{n_params / 1e9:.2f} B params, {dtype}",
    )
    t = time.perf_counter()
    model = sn.bridge_from_hf(
        hf, tokenizer, name=f"{args.shape}{'-tiny' if args.tiny else ''}-random", device=None if split else device
    )
    step("wrap with bridge_from_hf", time.perf_counter() - t)
    device = torch.device(model.cfg.device)  # inputs go to the embedding's device
    mc = model.cfg
    layer = round(0.75 * mc.n_layers) if args.edit_layer is None else args.edit_layer
    layer = min(layer, mc.n_layers - 1)
    print(
        f"\nmodel {args.shape}{' (tiny)' if args.tiny else ''}: {mc.n_layers} layers, d_model {mc.d_model}, "
        f"d_mlp {mc.d_mlp}, attention {args.attn}; tokenizer {tok_name} ({len(tokenizer)} tokens)"
    )

    prompts = C.bench_prompts(args.prompts)
    texts = [p.text for p in prompts]
    batches = [b.to(device) for _, b in length_sorted_batches(tokenizer, texts, args.batch_size)]
    n_tok = sum(int(b.attention_mask.sum()) for b in batches)
    print(
        f"prompts {len(prompts)} in {len(batches)} batches of ≤ {args.batch_size}: {n_tok} tokens "
        f"({sum(b.input_ids.numel() for b in batches)} with padding); edit layer {layer}, |S| = {args.edit_neurons}\n"
    )

    # --- 1. collection ----------------------------------------------------------------------------
    rows_key = ("mlp_in", layer)

    def collect(ps):
        return sn.collect_activations(model, ps, rows_at=[rows_key], batch_size=args.batch_size, progress=False)

    step("warm-up collection (one batch)", C.timed(lambda: collect(prompts[: args.batch_size]), sync))
    if on_gpu:
        for i in range(max(args.n_devices, 1)):
            torch.cuda.reset_peak_memory_stats(i)
    box = {}
    coll_times = []
    for _ in range(args.collect_repeats):
        coll_times.append(C.timed(lambda: box.__setitem__("coll", collect(prompts)), sync))
    coll = box["coll"]
    t_coll = C.median(coll_times)
    step(
        f"collect_activations ({len(prompts)} prompts, all layers)",
        t_coll,
        f"{n_tok / t_coll:,.0f} tokens/s; stats {tuple(coll.stats.mean.shape)} float64",
    )
    peak_gpu = [torch.cuda.max_memory_allocated(i) / 2**30 for i in range(max(args.n_devices, 1))] if on_gpu else None

    t_bare = None
    if not args.no_bare:

        @torch.no_grad()
        def bare():
            for b in batches:
                hf.model(b.input_ids, **b.model_kwargs())

        bare()  # warm-up
        t_bare = C.median([C.timed(bare, sync) for _ in range(args.collect_repeats)])
        step("bare HF decoder forward, same batches", t_bare, f"collection / bare = {t_coll / t_bare:.2f}×")

    # --- 2. ranking -------------------------------------------------------------------------------
    t_rank = C.median(C.repeat(lambda: box.__setitem__("ranking", sn.rank_neurons(coll.stats)), args.repeats))
    ranking = box["ranking"]
    step("rank_neurons", t_rank, f"{int(ranking.counts().sum())} (language, layer, neuron) selections")

    # --- 3. solve ---------------------------------------------------------------------------------
    m = min(args.edit_neurons, mc.d_mlp)
    idx = ranking.z[ranking.langs.index("en"), ranking.layers.index(layer)].topk(m).indices.sort().values
    rows = coll.rows
    where = {(p.lang, p.id): i for i, p in enumerate(rows.prompts)}
    low = [p for p in rows.prompts if p.lang != "en" and p.label == "harmful"]
    keep = [p for p in rows.prompts if p.label == "harmless"]
    X_all = rows.matrix(*rows_key)
    X = X_all[[where[(p.lang, p.id)] for p in low]]
    X_en = X_all[[where[("en", p.id)] for p in low]]
    X_safe = X_all[[where[(p.lang, p.id)] for p in keep]]
    W_gate = model.blocks[layer].mlp.W_gate.detach()  # on its own layer's device when split
    W_s = W_gate[:, idx.to(W_gate.device)].to(torch.float64).cpu()
    D = (X_en - X) @ W_s

    def solve():
        return sn.solve_edit(X, D, X_safe, rank=args.rank)

    t_solve = C.median(C.repeat(solve, args.repeats))
    sol = solve()
    step(
        f"solve_edit (N={X.shape[0]}, d={X.shape[1]}, m={m}, k={X_safe.shape[0]})",
        t_solve,
        f"rank {sol.rank}, gap closed on fit rows {1 - sol.loss_after / sol.loss_before:.1%}",
    )

    # --- 4. fit_edit, apply, revert ---------------------------------------------------------------
    spec = sn.EditSpec.paper(layers=layer, neurons={layer: idx}, rank=args.rank)  # the same gate edit

    def fit():
        return sn.fit_edit(model, prompts, spec, rows=rows, progress=False)

    t_fit = C.median(C.repeat(lambda: box.__setitem__("edit", fit()), args.repeats, sync=sync))
    edit = box["edit"]
    step("fit_edit (from the collected rows)", t_fit)

    def apply_revert():
        t = C.timed(lambda: edit.apply(model), sync)
        edit.revert(model)
        return t

    apply_revert()  # warm-up
    t_apply = C.median([apply_revert() for _ in range(args.repeats)])

    def revert_after_apply():
        edit.apply(model)
        return C.timed(lambda: edit.revert(model), sync)

    t_revert = C.median([revert_after_apply() for _ in range(args.repeats)])
    step("WeightEdit.apply", t_apply, f"{m} columns of W_gate at layer {layer}")
    step("WeightEdit.revert", t_revert)

    total = time.perf_counter() - t_all
    print()
    print(C.table(["step", "seconds", "note"], steps))
    if peak_gpu is not None:
        print(
            f"\npeak GPU memory during the collection: {', '.join(f'GPU {i} {g:.1f} GiB' for i, g in enumerate(peak_gpu))} "
            f"(weights {n_params * hf.dtype.itemsize / 2**30:.1f} GiB in all)"
        )
    print(f"peak RSS of this process: {C.peak_rss_mb() / 1024:.1f} GiB; total wall time {total:.0f} s\n")
    where_ = "CPU, tiny config: code path only" if args.tiny else (props.name if on_gpu else "CPU")
    if args.n_devices > 1:
        where_ += f" × {args.n_devices}, layers split"
    C.headline(
        "identify safety neurons (collect + rank)",
        f"{t_coll + t_rank:.1f} s for {len(prompts)} prompts at all {mc.n_layers} layers of a "
        f"{args.shape}{' (tiny)' if args.tiny else ''} model ({where_}); paper: ~40 s on a 7B model",
    )
    if t_bare:
        C.headline("collection / bare HF decoder", f"{t_coll / t_bare:.2f}×")
    C.headline("solve_edit", f"{t_solve:.2f} s (d={X.shape[1]}, m={m}, N={X.shape[0]})")
    C.headline("fit_edit from rows", f"{t_fit:.2f} s")
    C.headline("WeightEdit.apply", f"{1e3 * t_apply:.1f} ms")
    C.headline("total wall time", f"{total:.0f} s")


if __name__ == "__main__":
    main()
