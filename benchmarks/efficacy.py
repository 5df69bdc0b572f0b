"""Side-by-side efficacy: every edit and baseline on the same prompts, in one run, one table.

    python benchmarks/efficacy.py                 # the packaged Qwen model, bundled test split subset
    python benchmarks/efficacy.py --harmful 60 --harmless 60 --mc 80     # the full test split (hours on CPU)

Conditions: no edit; the paper's configuration (one layer, `gate`, English safety neurons, r = 32);
this project's best configuration; the `w_out` fold of the design card (safety-neuron activation map);
the hard null-space variant of the best; α-scaling of the English safety neurons; adding the
refusal direction; the best edit without its utility anchor. ASR is judged by `PhraseJudge` on greedy
answers; KL is KL(base ‖ edited) at the first answer token of harmless prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import safety_neurons as sn  # noqa: E402
from safety_neurons.evaluation import kl_divergence, mc_accuracy  # noqa: E402
from safety_neurons.prompts import LANG_NAMES  # noqa: E402

BEST = dict(layers=[19], site="w_out", target="residual", neurons="all", ridge=0.1,
            preserve=["harmless", "pivot_harmful"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=sn.DEFAULT_MODEL)
    p.add_argument("--anchor", type=int, default=30, help="anchor prompts per language and label")
    p.add_argument("--harmful", type=int, default=10, help="harmful test prompts per language (split has 60)")
    p.add_argument("--harmless", type=int, default=5, help="harmless test prompts per language (split has 60)")
    p.add_argument("--mc", type=int, default=10, help="multiple-choice questions per language (of 80)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--paper-layer", type=int, default=22)
    p.add_argument("--out", default="benchmarks/results/efficacy.json")
    p.add_argument("--only", nargs="+", default=["none", "paper", "ours", "fold", "gamma10", "nullspace", "alpha",
                                                 "refdir", "noanchor"], help="conditions to run (keys)")
    args = p.parse_args()

    start = time.perf_counter()
    model = sn.load_model(args.model)
    prompts = sn.load_prompts()
    anchor = list(prompts.filter(split="anchor", limit=args.anchor))
    test = prompts.filter(split="test")
    test_h = list(test.filter(label="harmful", limit=args.harmful))
    test_s = list(test.filter(label="harmless", limit=args.harmless))
    questions = [q for q in sn.load_utility() if int(q.id.split("-")[1]) <= args.mc]
    layers = sorted({args.paper_layer, *BEST["layers"]})
    coll = sn.collect_activations(model, anchor, rows=[(s, layer) for layer in layers for s in ("mlp_in", "act", "resid")])
    ranking = sn.rank_neurons(coll.stats)

    def fit(**kw):
        return sn.fit_edit(model, anchor, rows=coll.rows, sequential=False, progress=False, **kw)

    best = dict(BEST)
    L = BEST["layers"][0]
    conditions = {  # key: (label, factory); factories run only for the chosen keys
        "none": ("no edit", lambda: None),
        "paper": (f"paper: gate L{args.paper_layer}, English safety neurons, r=32", lambda: fit(
            layers=args.paper_layer, site="gate", target="neurons", neurons=ranking, neuron_langs=["en"])),
        "ours": (f"ours: w_out L{L}, residual target, all neurons", lambda: fit(**best)),
        "fold": (f"w_out fold: safety-neuron activation map L{L} (all languages' sets)", lambda: fit(
            layers=[L], site="w_out", target="neurons", neurons=ranking, neuron_langs=list(sn.LANGS),
            preserve=BEST["preserve"])),
        "gamma10": ("ours, γ=10 (utility weighted 10×)", lambda: fit(**{**best, "gamma": 10.0})),
        "nullspace": ("ours, hard null-space constraint", lambda: fit(**best, method="nullspace")),
        "alpha": ("α-scaling of English safety neurons (α=1.5, all layers)",
                  lambda: sn.NeuronScaling.from_ranking(ranking, alpha=1.5)),
        "refdir": (f"refusal direction added at L{L} (coeff 1)",
                   lambda: sn.RefusalDirection.fit(model, anchor, layer=L, progress=False)),
        "noanchor": ("ours without the utility anchor (harmless rows)",
                     lambda: fit(**{**best, "preserve": ["pivot_harmful"]})),
    }  # fmt: skip
    unknown = set(args.only) - set(conditions)
    if unknown:
        raise SystemExit(f"unknown condition(s) {sorted(unknown)}; choose from {list(conditions)}")
    conditions = {label: make() for key, (label, make) in conditions.items() if key in args.only}
    print(f"set-up (collect, rank, fit): {time.perf_counter() - start:.0f} s")
    judge = sn.PhraseJudge()
    rows = []
    for name, intervention in conditions.items():
        t = time.perf_counter()
        ctx = intervention.applied(model) if intervention is not None else torch.no_grad()
        with ctx:
            ev = sn.evaluate(model, test_h + test_s, judge=judge, max_new_tokens=args.max_new_tokens, desc=name[:30])
            acc = mc_accuracy(model, questions)
        kl = 0.0 if intervention is None else kl_divergence(model, intervention, test_s, k=1)["first"].mean().item()
        non = [x for x in sn.LANGS if x != "en"]
        row = {
            "condition": name,
            "asr": {x: ev.languages[x].asr for x in sn.LANGS},
            "mean_non_english_asr": ev.mean_asr(non),
            "over_refusal": sum(ev.languages[x].over_refusal for x in sn.LANGS) / len(sn.LANGS),
            "kl_first_token": kl,
            "mc_accuracy": sum(acc.values()) / len(acc),
            "seconds": round(time.perf_counter() - t),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "judge": judge.name, "rows": rows}, indent=2))
    head = ("| condition | " + " | ".join(sn.LANGS) + " | mean non-en ASR | over-refusal | KL | MC acc |\n|"
            + "---|" * (len(sn.LANGS) + 5))  # fmt: skip
    print("\n" + head)
    for r in rows:
        print(f"| {r['condition']} | " + " | ".join(f"{100 * r['asr'][x]:.0f}" for x in sn.LANGS)
              + f" | {100 * r['mean_non_english_asr']:.1f}% | {100 * r['over_refusal']:.1f}% | {r['kl_first_token']:.3f} "
              f"| {100 * r['mc_accuracy']:.1f}% |")  # fmt: skip
    n = len(test_h) // len(sn.LANGS)
    print(f"\n{n} harmful + {len(test_s) // len(sn.LANGS)} harmless test prompts per language "
          f"({', '.join(LANG_NAMES[x] for x in sn.LANGS)}); judge {judge.name}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
