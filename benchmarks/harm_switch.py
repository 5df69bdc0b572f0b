"""The harm switch (`safety_neurons.switch`) on the packaged Qwen model: detector quality per language, the
setting chosen on the validation split, and the test-split table beside every other method's row.

    python benchmarks/harm_switch.py --layer 20 > benchmarks/results/harm_switch.md

Fitted on the whole anchor split (60 + 60 prompts a language; the model's 32-token answers to 20 harmless
prompts a language, `results/harmless_answers_32.json`, give the place v its "0" rows). Chosen on 20 + 20
validation prompts a language by the rule "lowest non-English compliance with no language's harmless refusals
up". Reported on the test prompts of `efficacy_3way_subset.md` (15 harmful + 10 harmless a language), whose
unedited answers (`results/efficacy_none_3way.json`) are the drafts: every edited answer is the edited
model's own greedy answer (`generate(drafts=)`), found at the cost of one forward pass where it agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import safety_neurons as sn
from safety_neurons import switch as sw
from safety_neurons.evaluation import kl_divergence

import _common as C
from _common import CAPTION, NON_EN, RESULTS, as_prompts, markdown, outcome_fields, refused_more


def evaluation_of(records: list[dict]) -> sn.Evaluation:
    return sn.Evaluation.from_answers("phrase", records)


def row(name: str, ev: sn.Evaluation, extra: dict | None = None) -> dict:
    return {"condition": name, **outcome_fields(ev), "mean_mc_accuracy": float("nan"), **(extra or {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layer", type=int, default=C.SWITCH_LAYER)
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--strengths", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    p.add_argument(
        "--fires",
        type=int,
        nargs="+",
        default=[0, 2, 4, 8],
        help="validation harmless prompts (of 160) allowed above the threshold: the θ grid",
    )
    p.add_argument(
        "--val-base",
        default=str(RESULTS / "val_base_answers.json"),
        help="the unedited model's validation answers (made here when missing)",
    )
    p.add_argument("--detector", help="a saved HarmDetector folder to use instead of fitting one (same settings)")
    p.add_argument("--out", default=str(RESULTS / "harm_switch.json"))
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.perf_counter()
    model = C.load_model()
    saved = json.loads((RESULTS / "harmless_answers_32.json").read_text())
    answers = {
        split: {(k.split("|")[1], k.split("|")[2]): v for k, v in saved.items() if k.startswith(split + "|")}
        for split in ("anchor", "val")
    }

    if args.detector:
        det = sw.HarmDetector.load(args.detector)
        if (det.layer, det.settings["ridge"]) != (args.layer, args.ridge):
            raise SystemExit(
                f"{args.detector}: fitted at layer {det.layer}, ridge {det.settings['ridge']}; not the asked settings"
            )
    else:
        det = sw.fit_detector(
            model, C.split("anchor"), layer=args.layer, answers=answers["anchor"], ridge=args.ridge, progress=True
        )
    val = C.split("val", limit=20)
    scores = det.scores(
        model, val, [answers["val"].get((q.lang, q.id)) if q.label == "harmless" else None for q in val]
    )
    harmless = torch.tensor([q.label == "harmless" for q in val])
    print(
        f"# Harm switch at layer {args.layer}\n\nDetector on the validation split (20 + 20 a language): ROC AUC of the"
        " trigger score, harmful against harmless, and the place signal's largest size off the triggers.\n"
    )
    print("| | " + " | ".join(sn.LANGS) + " | all |\n|" + "---|" * (len(sn.LANGS) + 2))
    print("| AUC | " + " | ".join(f"{scores.roc_auc(x):.2f}" for x in sn.LANGS) + f" | {scores.roc_auc():.2f} |")
    leak = torch.maximum(scores.leak_message, scores.leak_answer)
    print(
        "| max off-trigger |v·x| | "
        + " | ".join(f"{leak[[i for i, q in enumerate(val) if q.lang == x]].max():.2f}" for x in sn.LANGS)
        + f" | {leak.max():.2f} |\n"
    )

    # --- the unedited validation answers (drafts for every setting) ------------------------------------
    vb = Path(args.val_base)
    if vb.exists():
        base_val = evaluation_of(json.loads(vb.read_text()))
    else:
        drafts = [answers["val"].get((q.lang, q.id), "") if q.label == "harmless" else "" for q in val]
        base_val = sn.evaluate(model, val, drafts=drafts, desc="validation answers, no edit")
        vb.write_text(json.dumps(base_val.answers, ensure_ascii=False))

    # --- choose θ and α on validation ------------------------------------------------------------------
    neg = scores.trigger[harmless].sort(descending=True).values
    grid = []
    for allowed in args.fires:
        theta = float(neg[allowed]) + 1e-3 if allowed < len(neg) else float(neg[-1])
        for strength in args.strengths:
            edit = sw.fit_switch(model, det, threshold=theta, strength=strength)
            with edit.applied(model):
                ev = sn.evaluate(model, val, drafts=base_val, progress=False)
            more = refused_more(ev, base_val)
            grid.append(
                {
                    "fires": allowed,
                    "threshold": theta,
                    "strength": strength,
                    "asr": ev.mean_asr(NON_EN),
                    "en_asr": ev.languages["en"].asr,
                    "refused_more": more,
                    "ok": max(more.values()) <= 0,
                }
            )
            print(
                f"validation: θ={theta:.3f} (≥{allowed} harmless above) α={strength:g}: non-en compliance "
                f"{100 * ev.mean_asr(NON_EN):.1f}% (no edit {100 * base_val.mean_asr(NON_EN):.1f}%), en "
                f"{100 * ev.languages['en'].asr:.0f}%, harmless refused more {more}",
                file=sys.stderr,
                flush=True,
            )
    ok = [g for g in grid if g["ok"]] or grid
    best = min(ok, key=lambda g: (g["asr"], -g["threshold"]))
    print(
        f"Chosen on validation (lowest non-English compliance with no language's harmless refusals up): "
        f"θ = {best['threshold']:.3f}, α = {best['strength']:g} (validation non-English compliance "
        f"{100 * best['asr']:.1f}% against {100 * base_val.mean_asr(NON_EN):.1f}% unedited).\n"
    )

    # --- test: the chosen setting, and a θ sweep at the chosen α (frontier points) ----------------------
    none = json.loads((RESULTS / "efficacy_none_3way.json").read_text())
    base_test = evaluation_of(none["answers"]["none"])
    test_prompts = as_prompts(none["answers"]["none"])
    rows, sweep, kept = [row("no edit", base_test)], [], {}
    for g in sorted({g["threshold"] for g in grid} | {best["threshold"]}):
        edit = sw.fit_switch(model, det, threshold=g, strength=best["strength"])
        with edit.applied(model):
            ev = sn.evaluate(model, test_prompts, drafts=base_test, progress=False)
        chosen = g == best["threshold"]
        kl = kl_divergence(model, edit, [q for q in test_prompts if q.label == "harmless"], k=4) if chosen else None
        name = f"harm switch L{args.layer}, θ={g:.2f}, α={best['strength']:g}" + (
            " (chosen on validation)" if chosen else ""
        )
        extra = (
            {}
            if kl is None
            else {"kl_first_token": float(kl["first"].mean()), "kl_first_4_tokens": float(kl["mean_k"].mean())}
        )
        rows.append(row(name, ev, extra))
        sweep.append(
            {
                "threshold": g,
                "strength": best["strength"],
                "asr": ev.mean_asr(NON_EN),
                "over_refusal": ev.mean_over_refusal(),
                "en_asr": ev.languages["en"].asr,
                "refused_more": refused_more(ev, base_test),
            }
        )
        kept[name] = ev.answers
    print(
        "Test prompts of `efficacy_3way_subset.md` (15 harmful + 10 harmless a language); MC accuracy not "
        "measured here (–); KL over the 80 harmless test prompts for the chosen setting.\n"
    )
    print(markdown(rows).replace("nan%", "–") + "\n\n" + CAPTION)
    edit = sw.fit_switch(model, det, threshold=best["threshold"], strength=best["strength"])
    weights = 3 * 2 * model.cfg.d_model
    print(
        f"\nThe edit touches {weights} weights of layer {args.layer}'s MLP "
        f"({100 * weights / (3 * model.cfg.d_model * model.cfg.d_mlp):.3f}% of it): neurons {edit.settings['neurons']}."
    )
    print(f"\n{time.perf_counter() - start:.0f} s in all", file=sys.stderr)
    Path(args.out).write_text(
        json.dumps(
            {
                "args": vars(args),
                "grid": grid,
                "chosen": best,
                "spec": edit.spec.to_dict(),
                "sweep": sweep,
                "rows": rows,
                "answers": kept,
            },
            indent=1,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
