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

import _common as C

import safety_neurons as sn
from _common import NON_EN, RESULTS, carried, markdown, outcome_fields


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options: --help
    shared = C.shared_test()
    rows = json.loads((RESULTS / "efficacy_none_3way.json").read_text())["rows"]
    rejudged = json.loads((RESULTS / "efficacy_rest_3way.json").read_text())
    for r in rejudged["rows"]:
        recs = [a for a in rejudged["answers"][r["key"]] if (a["lang"], a["id"]) in shared]
        rows.append(carried(r) | outcome_fields(sn.Evaluation.from_answers("phrase", recs)))
    print(markdown(rows))
    print("\n| condition | English harmful: refusal / compliance / degenerate | non-English harmful degenerate "
          "| non-English harmless refused |\n|---|---|---|---|")
    for r in rows:
        c = r["counts"]
        en = c["en"]["harmful"]
        deg = sum(c[x]["harmful"]["degenerate"] for x in NON_EN), sum(sum(c[x]["harmful"].values()) for x in NON_EN)
        ref = sum(c[x]["harmless"]["refusal"] for x in NON_EN), sum(sum(c[x]["harmless"].values()) for x in NON_EN)
        print(f"| {r['condition']} | {en['refusal']} / {en['compliance']} / {en['degenerate']} "
              f"| {sn.Rate(*deg)} | {sn.Rate(*ref)} |")


if __name__ == "__main__":
    main()
