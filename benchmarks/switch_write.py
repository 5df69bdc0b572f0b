"""What the harm switch writes: the shipped refusal direction against a "refuse rather than comply" direction,
each under the oracle (the switch forced on for every harmful prompt), on the validation split.

The shipped direction r is the English harmful − harmless mean residual after layer 20 at the trigger
positions. Under the oracle it turns most Vietnamese and Indonesian answers into English, and English
openings can still comply ("To …, you can follow these steps"). The alternative, r_refuse, is fitted on the
anchor split from the model's own verdicts: per language, the mean residual at the trigger positions of the
harmful prompts it refuses minus that of those it complies with, averaged over the languages that have at
least `--min-each` of both (so the language component cancels). Both are scaled to r's norm.

    python benchmarks/switch_write.py            # about 20 min of this CPU; results/switch_write.json and .md

Only the validation split is read for the comparison; the test split is not touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch
from switch_limits import DETECTOR, FORCED_ON

import safety_neurons as sn
from safety_neurons import switch as sw

import _common as C
from _common import NON_EN, RESULTS, as_prompts


@torch.no_grad()
def refuse_direction(model, det, min_each: int, tokens: int) -> tuple[torch.Tensor, dict]:
    anchor = list(sn.load_prompts().filter(split="anchor", label="harmful"))
    ev = sn.evaluate(model, anchor, max_new_tokens=tokens, desc="anchor harmful, no edit")
    verdict = {(r["lang"], r["id"]): r["outcome"] for r in ev.answers}
    sums: dict[tuple[str, str], torch.Tensor] = {}
    counts: dict[tuple[str, str], int] = {}
    point = ("resid", det.layer)
    for cur, kinds, idx in sw._positions(
        model, anchor, None, [point], det.trigger, 16, True, "anchor harmful, trigger residuals"
    ):
        x = cur[point].double().cpu()
        for r, i in enumerate(idx):
            p = anchor[i]
            key = (p.lang, verdict[(p.lang, p.id)])
            sums[key] = sums.get(key, 0) + x[r][kinds[r] == sw.TRIGGER].mean(0)
            counts[key] = counts.get(key, 0) + 1
    used = [
        lang
        for lang in sn.LANGS
        if counts.get((lang, "refusal"), 0) >= min_each and counts.get((lang, "compliance"), 0) >= min_each
    ]
    if not used:
        raise SystemExit(f"no language has {min_each} refused and {min_each} complied anchor prompts")
    d = sum(
        sums[(x, "refusal")] / counts[(x, "refusal")] - sums[(x, "compliance")] / counts[(x, "compliance")]
        for x in used
    )
    d = d / len(used)
    info = {
        "languages": used,
        "counts": {f"{a}/{b}": n for (a, b), n in sorted(counts.items())},
        "cosine_with_r": float(torch.nn.functional.cosine_similarity(d, det.refusal.double(), dim=0)),
    }
    return d * (det.refusal.norm() / d.norm()), info


def row(condition: str, ev: sn.Evaluation) -> dict:
    """Compliance counts per language, the non-English mean with its pooled interval, degenerate share."""
    lo, hi = ev.pooled("harmful", "compliance", NON_EN).interval
    cells = " | ".join(str(ev.languages[x].harmful["compliance"]) for x in sn.LANGS)
    asr = ev.mean_asr(NON_EN)
    line = f"| {condition} | {cells} | {100 * asr:.1f}% [{100 * lo:.0f}–{100 * hi:.0f}] | {100 * ev.mean_degenerate():.1f}% |"
    return {
        "condition": condition,
        "counts": {x: ev.languages[x].harmful for x in sn.LANGS},
        "non_en_compliance": asr,
        "line": line,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strengths", type=float, nargs="+", default=[8.0, 12.0])
    p.add_argument("--min-each", type=int, default=5)
    p.add_argument("--tokens", type=int, default=12, help="answer tokens judged for the anchor verdicts")
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = C.load_model()
    det = sw.HarmDetector.load(DETECTOR)
    r_refuse, info = refuse_direction(model, det, args.min_each, args.tokens)
    print(json.dumps(info), flush=True)
    val = [r for r in json.loads((RESULTS / "val_base_answers.json").read_text()) if r["label"] == "harmful"]
    base = sn.Evaluation.from_answers("phrase", val)
    rows = [row("no edit", base)]
    out = {"info": info, "runs": []}
    for name, direction in (("r (shipped)", det.refusal), ("r_refuse", r_refuse.to(det.refusal.dtype))):
        d = dataclasses.replace(det, refusal=direction)
        for alpha in args.strengths:
            edit = sw.fit_switch(model, d, threshold=FORCED_ON, strength=alpha)
            t0 = time.perf_counter()
            with edit.applied(model):
                ev = sn.evaluate(model, as_prompts(val), drafts=base, desc=f"oracle {name} α={alpha:g}")
            rows.append(row(f"oracle, {name}, α={alpha:g}", ev))
            out["runs"].append({**rows[-1], "seconds": time.perf_counter() - t0, "answers": ev.answers})
            (RESULTS / "switch_write.json").write_text(json.dumps(out, ensure_ascii=False, indent=1))
            print(rows[-1]["line"], flush=True)
    text = (
        "# What the switch writes: oracle runs on the validation harmful prompts (20 a language)\n\n"
        f"r_refuse: refused − complied anchor harmful prompts, averaged over {', '.join(info['languages'])}; "
        f"cosine with r {info['cosine_with_r']:.2f}; scaled to r's norm. Harmless columns are not measured "
        "(the oracle is off on harmless prompts by construction).\n\n"
        + "| condition | "
        + " | ".join(sn.LANGS)
        + " | mean non-en compliance [95% CI] | non-en degenerate |\n"
        + "|---|"
        + "---|" * (len(sn.LANGS) + 2)
        + "\n"
        + "\n".join(r["line"] for r in rows)
        + "\n\nPer-language columns: harmful prompts complied with, of 20.\n"
    )
    (RESULTS / "switch_write.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
