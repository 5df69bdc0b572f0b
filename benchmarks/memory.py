"""Peak resident memory of `collect_activations` for a small and a large number of prompts.

Every measurement runs in a fresh Python process that loads the model, runs one short full forward
(so every weight page, LM head included, is resident: the safetensors weights may be memory-mapped)
and reads its RSS: that is the model's own footprint. The peak-RSS counter (VmHWM) is then reset
(/proc/self/clear_refs) and the collection runs; "peak" is VmHWM afterwards, "extra" = peak − footprint.

The statistics (float64 mean and M2 per language/label group, layer and neuron) have a fixed size,
so with statistics only the peak should not grow with the number of prompts; requesting the rows of
one (site, layer) adds N × width × 8 bytes (float64) for N prompts, which the second pair of runs
shows. Both prompt sets contain the same `batch_size` longest prompts, so their widest batch (which
sets the transient activation memory of the forward pass) is identical; the remaining prompts are
balanced over languages and labels (`_common.bench_prompts`; repeated with fresh ids past the 2,560
bundled prompts).

glibc's malloc raises its mmap threshold after the first large frees and then serves blocks of up
to 32 MiB from the heap, which it does not always hand back: with the default settings the peak RSS
of the same collection varies by ±15 MiB from run to run, as much as the effect measured here. The
children therefore run with `MALLOC_MMAP_THRESHOLD_=65536` (blocks ≥ 64 KiB are mmapped and returned
on free), so the peak is the live memory; `--default-malloc` measures with glibc's defaults.

    python benchmarks/memory.py                                       # SmolLM2-135M, 64 vs 1024 prompts
    python benchmarks/memory.py --model qwen2.5-coder-0.5b-instruct   # 64 vs 256 prompts
    python benchmarks/memory.py --quick                               # SmolLM2, 20 vs 24 prompts, batch 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common as C

SMALL_DEFAULT = {C.SMALL_MODEL: (64, 1024), C.MODEL: (64, 256)}


def child(spec: dict) -> dict:
    import torch

    import safety_neurons as sn
    from safety_neurons.activations import site_width
    from safety_neurons.chat import length_sorted_batches, tokenize_chat

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    imports = C.rss_mb()
    t0 = time.perf_counter()
    model = C.load_model(spec["model"])
    pool = C.bench_prompts(spec["n_large"])
    n, bs = spec["n"], spec["batch_size"]
    # the bs longest prompts of the large set (length-sorted, batch 1), then the others round-robin over
    # the (language, label) groups, so that any 16 of them cover all groups
    order = [idx[0] for idx, _ in length_sorted_batches(model.tokenizer, [p.text for p in pool], 1)]
    longest = set(order[-bs:])
    seen: dict[tuple[str, str], int] = {}
    rank = {}
    for i, p in enumerate(pool):
        seen[(p.lang, p.label)] = seen.get((p.lang, p.label), -1) + 1
        rank[i] = (seen[(p.lang, p.label)], i)
    others = sorted((i for i in range(len(pool)) if i not in longest), key=rank.__getitem__)
    chosen = sorted(longest)[:n] + others[: max(n - bs, 0)]
    prompts = [pool[i] for i in sorted(chosen)]
    batches = [b for _, b in length_sorted_batches(model.tokenizer, [p.text for p in prompts], bs)]

    with torch.no_grad():  # warm-up: one short full forward, LM head included
        warm = tokenize_chat(model.tokenizer, [prompts[0].text])
        model.original_model(warm.input_ids, **warm.model_kwargs())
        # touch every weight page: the embedding matrix is memory-mapped, and a forward pass reads only the rows of
        # the tokens it sees, so without this more prompts (more distinct tokens) would look like a leak
        for param in model.original_model.parameters():
            param.sum()
    footprint = C.rss_mb()
    anon, file = C.status_kb("RssAnon") / 1024, C.status_kb("RssFile") / 1024
    rows = []
    if spec["rows"]:
        site, layer = spec["rows"]
        rows = [(site, model.cfg.n_layers // 2 if layer is None else layer)]
    C.reset_peak_rss()
    t = time.perf_counter()
    coll = sn.collect_activations(model, prompts, rows_at=rows, batch_size=bs, progress=False)
    seconds = time.perf_counter() - t
    peak = C.peak_rss_mb()
    stats_mb = C.mb(coll.stats.mean.numel() * 8 * 2 + coll.stats.count.numel() * 8)
    rows_mb = C.mb(sum(x.numel() * 8 for x in coll.rows.rows.values()))
    return {
        "n": len(prompts),
        "imports_mb": imports,
        "footprint_mb": footprint,
        "anon_mb": anon,
        "file_mb": file,
        "groups": len(coll.stats.groups),
        "peak_mb": peak,
        "after_anon_mb": C.status_kb("RssAnon") / 1024,
        "after_file_mb": C.status_kb("RssFile") / 1024,
        "stats_mb": stats_mb,
        "rows_mb": rows_mb,
        "seconds": seconds,
        "boot_s": t - t0,
        "tokens": sum(int(b.attention_mask.sum()) for b in batches),
        "widest": list(max((tuple(b.input_ids.shape) for b in batches), key=lambda s: s[0] * s[1])),
        "width": site_width(model, rows[0][0]) if rows else None,
        "rows_key": rows[0] if rows else None,
        "n_layers": model.cfg.n_layers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2, 20 vs 24 prompts, batch 4")
    ap.add_argument("--model", default=C.SMALL_MODEL)
    ap.add_argument("--small", type=int, default=None, help="small prompt count (default 64)")
    ap.add_argument("--large", type=int, default=None, help="large prompt count (default 1024; 256 for Qwen)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rows-site", default="act", help="site of the rows in the second pair of runs")
    ap.add_argument("--rows-layer", type=int, default=None, help="layer of the rows (default: n_layers // 2)")
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's dynamic mmap threshold (noisier)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        C.emit(child(json.loads(args._child)))
        return
    if args.quick:
        args.small, args.large, args.batch_size = args.small or 20, args.large or 24, min(args.batch_size, 4)
    small, large = SMALL_DEFAULT.get(args.model, (64, 256))
    small, large = args.small or small, args.large or large
    if not 0 < small < large:
        ap.error(f"need 0 < --small < --large, got {small} and {large}")

    layer = args.rows_layer
    C.print_machine("collection memory")
    print(
        f"model {args.model}; statistics of 'act' at all layers; batch {args.batch_size}; "
        f"the rows runs add rows of {args.rows_site!r} at layer {'n_layers // 2' if layer is None else layer}\n"
    )
    env = {} if args.default_malloc else {"MALLOC_MMAP_THRESHOLD_": "65536"}
    print(f"allocator: {'glibc defaults' if args.default_malloc else 'MALLOC_MMAP_THRESHOLD_=65536 (see --help)'}\n")
    me = Path(__file__).resolve()
    t_all = time.perf_counter()
    res = {}
    for with_rows in (False, True):
        for n in (small, large):
            spec = dict(
                model=args.model,
                n=n,
                n_large=large,
                batch_size=args.batch_size,
                threads=args.threads,
                rows=[args.rows_site, layer] if with_rows else None,
            )
            r = C.run_child(me, ["--_child", json.dumps(spec)], env=env)
            res[(with_rows, n)] = r
            print(
                f"  {'stats + rows' if with_rows else 'stats only':<12} {n:>5} prompts: peak {r['peak_mb']:.0f} MiB "
                f"({r['seconds']:.0f} s)",
                flush=True,
            )
    print()
    rows = []
    for (with_rows, n), r in res.items():
        rows.append(
            [
                "stats + rows" if with_rows else "stats only",
                n,
                r["groups"],
                r["tokens"],
                "×".join(map(str, r["widest"])),
                r["imports_mb"],
                r["footprint_mb"],
                f"{r['anon_mb']:.0f} + {r['file_mb']:.0f}",
                r["peak_mb"],
                r["peak_mb"] - r["footprint_mb"],
                f"{r['after_anon_mb']:.0f} + {r['after_file_mb']:.0f}",
                r["stats_mb"],
                r["rows_mb"],
                r["seconds"],
            ]
        )
    print(
        C.table(
            [
                "run",
                "prompts",
                "groups",
                "tokens",
                "widest batch",
                "imports MiB",
                "model RSS MiB",
                "anon + file",
                "peak MiB",
                "extra MiB",
                "after: anon + file",
                "stats MiB",
                "rows MiB",
                "collect s",
            ],
            rows,
        )
    )
    print("\n'imports': RSS before loading the model (Python, torch, transformers, TransformerLens);")
    print(
        "'model RSS': after loading, one warm-up forward and a read of every weight (the model's own footprint), split into anonymous"
    )
    print(
        "memory and file-backed pages (the safetensors weights are memory-mapped from the model cache); 'peak': VmHWM during"
    )
    print("the collection; 'extra' = peak − model RSS; 'stats'/'rows': the sizes of the returned float64 tensors.\n")

    extra = len(range(small, large))
    g_stats = (res[(False, large)]["peak_mb"] - res[(False, small)]["peak_mb"]) / extra * 1024
    g_rows = (res[(True, large)]["peak_mb"] - res[(True, small)]["peak_mb"]) / extra * 1024
    width = res[(True, large)]["width"]
    print(
        f"rows collected at {tuple(res[(True, large)]['rows_key'])} of {res[(True, large)]['n_layers']} layers, width {width}\n"
    )
    expect = width * 8 / 1024
    print(
        C.table(
            ["", "KiB per extra prompt"],
            [
                ["peak growth, statistics only", g_stats],
                ["peak growth, statistics + rows", g_rows],
                ["  difference (rows' share)", g_rows - g_stats],
                [f"  expected rows: {width} × 8 bytes", expect],
            ],
        )
    )
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s\n")
    fp = res[(False, small)]["footprint_mb"]
    C.headline(
        "model footprint",
        f"{fp:.0f} MiB RSS ({args.model}; {fp - res[(False, small)]['imports_mb']:.0f} MiB above the imports)",
    )
    C.headline(
        "collection peak above the model",
        f"{res[(False, small)]['peak_mb'] - fp:.0f} MiB at {small} prompts, "
        f"{res[(False, large)]['peak_mb'] - res[(False, large)]['footprint_mb']:.0f} MiB at {large} (statistics only)",
    )
    C.headline(
        "peak growth per extra prompt",
        f"{g_stats:.1f} KiB (statistics only), {g_rows:.1f} KiB with rows (rows: {expect:.1f} KiB expected)",
    )


if __name__ == "__main__":
    main()
