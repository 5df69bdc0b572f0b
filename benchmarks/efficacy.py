"""Side-by-side efficacy: every edit and baseline on the same prompts, in one run, one table.

    python benchmarks/efficacy.py                      # the packaged Qwen model, 30 + 30 test prompts a language
    python benchmarks/efficacy.py --harmful 60 --harmless 60 --mc 80     # the whole test split (hours on CPU)
    python benchmarks/efficacy.py --only none ours     # a subset of the conditions
    python benchmarks/efficacy.py --table benchmarks/results/*.json*   # the table of saved results, no model
    python benchmarks/efficacy.py --rejudge benchmarks/results/efficacy_rest.json --out X.json
                                                       # the saved answers judged again (today's judge), no generation

Every condition is fitted on the same anchor prompts (default: the whole anchor split, 60 harmful + 60
harmless a language) and measured on the same test prompts: greedy answers judged three-way by `PhraseJudge`
(refusal, compliance or degenerate; ASR = compliance share of harmful prompts, counted with its 95% Wilson
interval; degenerate answers apart; over-refusal = refusal share of harmless prompts), KL(base ‖ edited) on harmless test prompts at the
first answer token and over the first 4 answer tokens (`--kl-prompts` a language), and cloze
multiple-choice accuracy. Each
condition's numbers are printed as one JSON line as soon as it is done, and all of them are written to
`--out` (JSON) with the settings, the answers included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import safety_neurons as sn
from safety_neurons.evaluation import kl_divergence, mc_accuracy, mean_over_languages
from safety_neurons.prompts import LANG_NAMES

import _common as C
from _common import CAPTION, NON_EN, carried, markdown, outcome_fields, saved_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=C.MODEL)
    p.add_argument("--anchor", type=int, default=60, help="anchor prompts per language and label (split has 60)")
    p.add_argument("--harmful", type=int, default=30, help="harmful test prompts per language (split has 60)")
    p.add_argument("--harmless", type=int, default=30, help="harmless test prompts per language (split has 60)")
    p.add_argument("--mc", type=int, default=20, help="multiple-choice questions per language (of 80)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--layer", type=int, default=C.LAYER, help="layer of this project's edit (and of the baselines)")
    p.add_argument("--alt-layer", type=int, default=C.ALT_LAYER, help="a second layer for this project's edit")
    p.add_argument("--kl-prompts", type=int, default=15, help="harmless test prompts per language for the KL")
    p.add_argument("--paper-layer", type=int, default=C.PAPER_LAYER)
    p.add_argument("--out", default="benchmarks/results/efficacy.json")
    p.add_argument("--only", nargs="+", default=None, help="conditions to run (keys; default all)")
    p.add_argument(
        "--table", nargs="+", metavar="FILE", help="print the table of saved results (.json or .jsonl) and stop"
    )
    p.add_argument("--rejudge", metavar="FILE", help="judge the answers saved in FILE again and write --out")
    p.add_argument("--misread", action="store_true", help="also find misreadings (loads the model: RelevanceCheck)")
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        metavar="S",
        help="measure each weight edit at these strengths (`WeightEdit.scaled`) instead of at 1: a frontier sweep",
    )
    p.add_argument(
        "--drafts",
        metavar="FILE",
        help="saved unedited answers to these test prompts (JSON records): each edited answer is verified against "
        "them in one pass and decoded on only where it differs (the same answers, faster)",
    )
    args = p.parse_args()
    if args.table:
        print(markdown([row for f in args.table for row in saved_rows(Path(f))]) + "\n\n" + CAPTION)
        return
    if args.rejudge:
        rejudge(args)
        return

    start = time.perf_counter()
    model = C.load_model(args.model)
    anchor = C.split("anchor", limit=args.anchor)
    test_h = C.split("test", label="harmful", limit=args.harmful)
    test_s = C.split("test", label="harmless", limit=args.harmless)
    questions = C.mc_questions(args.mc)
    kl_prompts = C.split("test", label="harmless", limit=args.kl_prompts)
    L, L2, PL = args.layer, args.alt_layer, args.paper_layer
    cached: dict = {}

    def collection():  # one pass over the anchors, only when a condition needs it ("none" does not)
        if not cached:
            cached["coll"] = sn.collect_activations(
                model,
                anchor,
                rows_at=[(s, layer) for layer in {L, L2, PL} for s in ("mlp_in", "act", "resid")],
                gram_at=[("act", L), ("act", L2)],
                gram_positions="preserved",
            )
            cached["ranking"] = sn.rank_neurons(cached["coll"].stats)
        return cached["coll"], cached["ranking"]

    def fit(spec: sn.EditSpec):
        return sn.fit_edit(model, anchor, spec.replace(sequential=False), rows=collection()[0], progress=False)

    conditions = {  # key: (label, factory); a factory runs only when its key is chosen
        "none": ("no edit", lambda: None),
        "paper": (f"paper: gate L{PL}, English safety neurons, r=32", lambda: fit(C.paper(collection()[1], PL))),
        "per_prompt": (
            f"w_out L{L2}, per-prompt gap, last position only (previous default)",
            lambda: fit(C.ours(L2, target="residual", refusal_boost=0.0, preserve_positions="last")),
        ),
        "ours_alt": (f"ours at L{L2}", lambda: fit(C.ours(L2))),
        "ours": (f"ours: w_out L{L}, language gap + refusal, all positions", lambda: fit(C.ours(L))),
        "ours_no_bn": (
            f"ours at L{L}, Bengali not targeted",
            lambda: fit(C.ours(L, langs=[x for x in NON_EN if x != "bn"])),
        ),
        "fold": (
            f"w_out fold: safety-neuron activation map L{L} (all languages' sets)",
            lambda: fit(C.paper(collection()[1], L, site="w_out", neuron_langs=sn.LANGS, preserve=C.ours(L).preserve)),
        ),
        "nullspace": ("ours, hard null-space constraint (1% energy)", lambda: fit(sn.EditSpec.nullspace(layers=[L]))),
        "alpha": (
            "α-scaling of English safety neurons (α=1.5, all layers)",
            lambda: sn.NeuronScaling.from_ranking(collection()[1], alpha=1.5),
        ),
        "refdir": (
            f"refusal direction added at L{L} (coeff 1)",
            lambda: sn.RefusalDirection.fit(model, anchor, layer=L, progress=False),
        ),
        "noanchor": (
            "ours without the utility anchor (no harmless rows or positions)",
            lambda: fit(C.ours(L, preserve=["pivot_harmful"], preserve_positions="last")),
        ),
    }
    only = args.only or list(conditions)
    unknown = set(only) - set(conditions)
    if unknown:
        raise SystemExit(f"unknown condition(s) {sorted(unknown)}; choose from {list(conditions)}")
    print(f"set-up (collect, rank): {time.perf_counter() - start:.0f} s", flush=True)
    judge = sn.PhraseJudge(relevance=sn.RelevanceCheck(model) if args.misread else None)
    drafts = None
    if args.drafts:
        saved_answers = {
            (r["lang"], r["id"], r["label"]): r["answer"] for r in json.loads(Path(args.drafts).read_text())
        }
        drafts = [saved_answers.get((q.lang, q.id, q.label), "") for q in test_h + test_s]
    rows, answers = [], {}

    def measure(key: str, label: str, intervention, fit_s: float, t: float) -> None:
        ctx = intervention.applied(model) if intervention is not None else torch.no_grad()
        with ctx:
            ev = sn.evaluate(
                model,
                test_h + test_s,
                judge=judge,
                max_new_tokens=args.max_new_tokens,
                drafts=drafts if intervention is not None else None,
                desc=label[:30],
            )
            acc = mc_accuracy(model, questions)
        kl = {"first": torch.zeros(1), "mean_k": torch.zeros(1)}
        if intervention is not None:
            kl = kl_divergence(model, intervention, kl_prompts, k=4)
        row = {
            "key": key,
            "condition": label,
            **outcome_fields(ev),
            "kl_first_token": kl["first"].mean().item(),
            "kl_first_4_tokens": kl["mean_k"].mean().item(),
            "mc_accuracy": acc,
            "mean_mc_accuracy": mean_over_languages(acc),
            "fit_seconds": round(fit_s, 1),
            "seconds": round(time.perf_counter() - t),
        }
        rows.append(row)
        answers[key] = ev.answers
        print(json.dumps({k: v for k, v in row.items() if k not in ("over_refusal", "mc_accuracy")}), flush=True)
        save(args, judge, rows, answers)  # after every condition: a stopped run keeps what it measured

    for key in only:
        label, make = conditions[key]
        t = time.perf_counter()
        try:
            fitted = make()
        except ValueError as err:  # e.g. a null space with no room to edit: record it, go on
            print(json.dumps({"key": key, "condition": label, "error": str(err)}), flush=True)
            rows.append({"key": key, "condition": label, "error": str(err)})
            continue
        fit_s = time.perf_counter() - t
        variants = [(key, label, fitted)]
        if args.scales and isinstance(fitted, sn.WeightEdit):
            variants = [(f"{key}@{x:g}", f"{label}, ×{x:g}", fitted.scaled(x)) for x in args.scales]
        for name, text, intervention in variants:
            measure(name, text, intervention, fit_s, time.perf_counter())
    save(args, judge, rows, answers)
    print("\n" + markdown(rows) + "\n\n" + CAPTION)
    print(
        f"\n{args.harmful} harmful + {args.harmless} harmless test prompts per language "
        f"({', '.join(LANG_NAMES[x] for x in sn.LANGS)}); {args.anchor} + {args.anchor} anchor prompts per language; "
        f"judge {judge.name}; {time.perf_counter() - start:.0f} s in all"
    )


def rejudge(args) -> None:
    """Judge the saved answers of every condition again with today's judge (no model unless --misread)."""
    saved = json.loads(Path(args.rejudge).read_text())
    model = C.load_model(args.model) if args.misread else None
    judge = sn.PhraseJudge(relevance=sn.RelevanceCheck(model) if model is not None else None)
    english = {p.id: p.text for p in C.prompts().filter(lang="en")}
    rows, answers = [], {}
    for row in saved["rows"]:
        if "error" in row or row["key"] not in saved["answers"]:
            continue
        recs = saved["answers"][row["key"]]
        verdicts = judge.judge(
            [r["prompt"] for r in recs],
            [r["answer"] for r in recs],
            [r["lang"] for r in recs],
            [english[r["id"]] for r in recs],
        )
        recs = [
            {k: r[k] for k in ("id", "lang", "label", "prompt", "answer")}
            | {"outcome": v.outcome, "kind": v.kind, "reason": v.reason}
            for r, v in zip(recs, verdicts)
        ]
        ev = sn.Evaluation.from_answers(judge.name, recs)
        rows.append(carried(row) | outcome_fields(ev) | {"rejudged_from": args.rejudge})
        answers[row["key"]] = recs
    save(argparse.Namespace(**(saved["args"] | {"rejudged_from": args.rejudge, "out": args.out})), judge, rows, answers)
    print(markdown(rows) + "\n\n" + CAPTION)


def save(args, judge, rows: list[dict], answers: dict) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ours = C.ours(getattr(args, "layer", C.LAYER)).to_dict()  # the recipe of the "ours" condition
    out.write_text(
        json.dumps(
            {"args": vars(args), "judge": judge.name, "ours": ours, "rows": rows, "answers": answers},
            indent=1,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
