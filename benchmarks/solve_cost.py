"""Time and peak memory of the closed-form solve (`sn.solve_edit`) at realistic sizes, against the
time the activation collection takes for the same number of prompts.

Each grid point is a gate-site edit (the paper's): keys X (N × d_model), target changes D (N × m,
m = |S| safety neurons), utility anchors X_safe (N × d_model, as many harmless rows as harmful
ones), rank 32, γ = 1, relative ridge 1e-2; "nullspace" adds `null_energy` (default 0.01: the
lowest-energy directions holding 1 % of ‖X_safe‖², needed once N ≥ d where X_safe has no exact
null space). The inputs are synthetic float64 with a decaying spectrum (σ_i ∝ (1 + i)^-½, like MLP
inputs); the solver's cost depends on the sizes, not on the values.

Memory: every grid point runs in a fresh Python process. After the inputs are built the process's
peak-RSS counter (VmHWM) is reset (/proc/self/clear_refs), so "solver peak" is the resident memory
the solve adds above its inputs, measured by the kernel over the whole first solve, including the
LAPACK workspaces and the temporaries torch frees again (all of the solve is float64 on the CPU,
so the RSS is the right measure; torch's CUDA allocator statistics would see none of it).

Time: an untimed warm-up solve on a small slice of the inputs (same method: loads LAPACK and starts
the thread pool), then up to `--repeats` full solves (fewer once a point has used `--budget` seconds;
at least one), median; the first full solve is also the one whose peak memory is read. The collection reference is measured once in the
same run (its own fresh process): `collect_activations` with statistics of `act` at all layers plus
the rows of one layer, the pass that yields a solve's inputs, on the packaged model; or pass
`--per-prompt-seconds`.

    python benchmarks/solve_cost.py              # 8 sizes (d 896…4096, m 32…2048, N 100…5000)
    python benchmarks/solve_cost.py --quick      # 4 small sizes, collection timed on SmolLM2
    python benchmarks/solve_cost.py --grid soft:4096:2048:5000 nullspace:4096:1024:2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common as C

GRID = [
    ("soft", 896, 32, 100),
    ("soft", 896, 256, 1000),
    ("soft", 896, 2048, 5000),
    ("soft", 2048, 512, 2000),
    ("soft", 4096, 256, 1000),
    ("soft", 4096, 2048, 5000),
    ("nullspace", 896, 256, 1000),
    ("nullspace", 4096, 1024, 2000),
]
QUICK_GRID = [
    ("soft", 256, 32, 100),
    ("soft", 896, 128, 500),
    ("nullspace", 896, 128, 500),
    ("nullspace", 896, 64, 1200),
]


def parse_point(s: str) -> tuple[str, int, int, int]:
    method, d, m, n = s.split(":")
    if method not in ("soft", "nullspace"):
        raise argparse.ArgumentTypeError(f"method must be soft or nullspace, got {method!r}")
    return method, int(d), int(m), int(n)


# --- child: one grid point ---------------------------------------------------------------------------
def child_solve(spec: dict) -> dict:
    import torch

    import safety_neurons as sn

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    method, d, m, n = spec["method"], spec["d"], spec["m"], spec["n"]
    base_rss = C.rss_mb()
    g = torch.Generator().manual_seed(0)
    scale = (1.0 + torch.arange(d, dtype=torch.float64)) ** -0.5
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    X_safe = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    D = X @ (torch.randn(d, m, generator=g, dtype=torch.float64) / d**0.5)
    D += 0.1 * torch.randn(n, m, generator=g, dtype=torch.float64)
    kwargs = dict(rank=spec["rank"], method=method)
    if method == "nullspace":
        kwargs["null_energy"] = spec["null_energy"]
    inputs_mb = C.mb(8 * (X.numel() + X_safe.numel() + D.numel()))

    def solve():
        return sn.solve_edit(X, D, X_safe, **kwargs)

    # warm-up: the same method on a small slice (loads LAPACK, starts the thread pool; cheap at any size)
    k, dw, mw = min(n, 64), min(d, 256), min(m, 32)
    sn.solve_edit(X[:k, :dw], D[:k, :mw], X_safe[:k, :dw], **{**kwargs, "rank": min(spec["rank"], mw)})
    before = C.rss_mb()
    C.reset_peak_rss()
    t = time.perf_counter()
    sol = solve()  # the first timed solve also gives the peak memory
    times = [time.perf_counter() - t]
    peak = C.peak_rss_mb()
    while len(times) < spec["repeats"] and sum(times) < spec["budget"]:
        times.append(C.timed(solve))
    return {
        "time_s": C.median(times),
        "reps": len(times),
        "inputs_mb": inputs_mb,
        "solver_peak_mb": peak - before,
        "process_peak_mb": peak,
        "base_mb": base_rss,
        "rank": sol.rank,
        "null_dim": sol.null_dim,
        "closed": 1 - sol.loss_after / sol.loss_before,
    }


# --- child: per-prompt collection time ---------------------------------------------------------------
def child_collect(spec: dict) -> dict:
    import torch

    import safety_neurons as sn

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model = C.load_model(spec["model"])
    prompts = C.bench_prompts(spec["prompts"])
    layer = model.cfg.n_layers // 2

    def collect(ps):
        sn.collect_activations(model, ps, rows_at=[("mlp_in", layer)], batch_size=spec["batch_size"], progress=False)

    collect(prompts[: min(4, len(prompts))])  # warm-up
    times = [C.timed(lambda: collect(prompts)) for _ in range(spec["repeats"])]
    return {"per_prompt_s": C.median(times) / len(prompts), "times": times, "prompts": len(prompts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 small sizes; collection timed on SmolLM2 (4 prompts)")
    ap.add_argument("--grid", nargs="+", type=parse_point, help="sizes as method:d:m:N (default: the 8-point grid)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--null-energy", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3, help="timed solves per size after the warm-up (at most)")
    ap.add_argument("--budget", type=float, default=12.0, help="stop repeating a size after this many seconds")
    ap.add_argument("--model", default=C.MODEL, help="model for the collection reference")
    ap.add_argument("--collect-prompts", type=int, default=16)
    ap.add_argument("--collect-repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--per-prompt-seconds", type=float, default=None, help="skip measuring the collection")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        spec = json.loads(args._child)
        C.emit(child_collect(spec) if spec["kind"] == "collect" else child_solve(spec))
        return
    grid = args.grid or (QUICK_GRID if args.quick else GRID)
    if args.quick:
        if args.model == ap.get_default("model"):
            args.model = C.SMALL_MODEL
        if args.collect_prompts == ap.get_default("collect_prompts"):
            args.collect_prompts = 4
        if args.collect_repeats == ap.get_default("collect_repeats"):
            args.collect_repeats = 1
        args.batch_size = min(args.batch_size, 4)

    C.print_machine("solve_edit cost")
    me = Path(__file__).resolve()
    t_all = time.perf_counter()
    if args.per_prompt_seconds is None:
        spec = dict(
            kind="collect",
            model=args.model,
            prompts=args.collect_prompts,
            repeats=args.collect_repeats,
            batch_size=args.batch_size,
            threads=args.threads,
        )
        ref = C.run_child(me, ["--_child", json.dumps(spec)])
        per_prompt = ref["per_prompt_s"]
        source = (
            f"measured: {args.model}, {ref['prompts']} prompts, batch {args.batch_size}, stats at all layers "
            f"+ rows of one layer, median of {len(ref['times'])}"
        )
    else:
        per_prompt = args.per_prompt_seconds
        source = "given by --per-prompt-seconds"
    print(f"collection reference: {per_prompt * 1e3:.1f} ms per prompt ({source})\n")

    rows, results = [], []
    for method, d, m, n in grid:
        spec = dict(
            kind="solve",
            method=method,
            d=d,
            m=m,
            n=n,
            rank=args.rank,
            null_energy=args.null_energy,
            repeats=args.repeats,
            budget=args.budget,
            threads=args.threads,
        )
        r = C.run_child(me, ["--_child", json.dumps(spec)])
        results.append(((method, d, m, n), r))
        coll = per_prompt * n
        rows.append(
            [
                method,
                d,
                m,
                n,
                r["time_s"],
                r["reps"],
                r["inputs_mb"],
                r["solver_peak_mb"],
                "-" if r["null_dim"] is None else r["null_dim"],
                coll,
                f"{r['time_s'] / coll:.3g}",
            ]
        )
        print(f"  {method:<9} d={d:<5} m={m:<5} N={n:<5} {r['time_s']:.3f} s", flush=True)
    print()
    print(
        C.table(
            [
                "method",
                "d",
                "m=|S|",
                "N",
                "solve s",
                "reps",
                "inputs MiB",
                "solver peak MiB",
                "null dim",
                "collect N s",
                "solve/collect",
            ],
            rows,
        )
    )
    print("\n'inputs MiB': X, D and X_safe (float64); 'solver peak MiB': peak RSS the solve adds above them (fresh")
    print("process per size, VmHWM reset after building the inputs); 'collect N s': N × the per-prompt collection")
    print(f"time above ({args.model}; a 7-8B model collects ~15× slower per prompt, so there the ratio is smaller).")
    print(f"total wall time {time.perf_counter() - t_all:.0f} s\n")

    worst = max(results, key=lambda x: x[1]["time_s"])
    (method, d, m, n), r = worst
    ratio_max = max(r2["time_s"] / (per_prompt * k[3]) for k, r2 in results)
    peak = max(results, key=lambda x: x[1]["solver_peak_mb"])
    C.headline(
        "slowest solve",
        f"{r['time_s']:.2f} s ({method}, d={d}, m={m}, N={n}; collection of its N prompts ≈ {per_prompt * n:.0f} s)",
    )
    C.headline("largest solve / collection ratio", f"{ratio_max:.3g}")
    C.headline(
        "largest solver peak memory",
        f"{peak[1]['solver_peak_mb']:.0f} MiB above inputs "
        f"({peak[0][0]}, d={peak[0][1]}, m={peak[0][2]}, N={peak[0][3]})",
    )
    C.headline("collection per prompt", f"{per_prompt * 1e3:.1f} ms ({args.model})")


if __name__ == "__main__":
    main()
