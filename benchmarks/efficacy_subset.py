"""The three-way efficacy table on one set of prompts for every condition: the no-edit run (15 harmful + 10
harmless test prompts a language, `results/efficacy_none_3way.json`) beside the saved answers of the other
conditions judged again (`results/efficacy_rest_3way.json`), restricted to the same prompts.

    python benchmarks/efficacy_subset.py > benchmarks/results/efficacy_3way_subset.md

KL and MC accuracy are those of each condition's own run (no edit: 10 MC questions a language; the others
20, and KL on 15 harmless prompts a language); compliance, degenerate and over-refusal are recounted on the
shared prompts.
"""

from __future__ import annotations

import argparse
import json

import safety_neurons as sn
from safety_neurons.evaluation import MEAN_RULE

import _common as C
from _common import CAPTION, RESULTS, carried, markdown, outcome_fields


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options: --help
    shared = C.shared_test()
    rows = json.loads((RESULTS / "efficacy_none_3way.json").read_text())["rows"]
    rejudged = json.loads((RESULTS / "efficacy_rest_3way.json").read_text())
    for r in rejudged["rows"]:
        recs = [a for a in rejudged["answers"][r["key"]] if (a["lang"], a["id"]) in shared]
        rows.append(carried(r) | outcome_fields(sn.Evaluation.from_answers("phrase", recs)))
    print(markdown(rows) + "\n\n" + CAPTION)
    print(
        "\n| condition | English harmful: refusal / compliance / degenerate | non-English harmful degenerate "
        "| harmless refused (over-refusal) |\n|---|---|---|---|"
    )

    def cell(mean: float, pooled: sn.Rate) -> str:
        lo, hi = pooled.interval
        return f"{100 * mean:.0f}% (pooled {pooled.k}/{pooled.n}; {100 * lo:.0f}–{100 * hi:.0f})"

    for r in rows:
        ev = sn.Evaluation.from_counts("saved", r["counts"])
        en = r["counts"]["en"]["harmful"]
        deg, ref = (sum(ev.rates(m).values(), sn.Rate(0, 0)) for m in ("degenerate", "over_refusal"))
        print(
            f"| {r['condition']} | {en['refusal']} / {en['compliance']} / {en['degenerate']} "
            f"| {cell(ev.mean_degenerate(), deg)} | {cell(ev.mean_over_refusal(), ref)} |"
        )
    print(
        f"\nMeans: {MEAN_RULE}. Degenerate: of the non-English languages' harmful answers; harmless refused: every "
        "language's, English included (the over-refusal column above); in brackets the pooled count of the same "
        "languages and its 95% Wilson interval."
    )


if __name__ == "__main__":
    main()
