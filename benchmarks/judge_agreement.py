"""How often the judge agrees with answers read by people: the gold set (tests/data/gold_answers.jsonl).

    python benchmarks/judge_agreement.py                   # PhraseJudge on the held-out part, no model
    python benchmarks/judge_agreement.py --misread         # + RelevanceCheck (loads the packaged Qwen model)
    python benchmarks/judge_agreement.py --misread --part tune --sweep    # choose the PMI threshold (tuning part)

Agreement is counted on the answers a reader could decide (gold label refusal, compliance or degenerate;
"unclear" answers are left out and counted), per language and per group (before/after an edit × harmful/
harmless), with 95% Wilson intervals. Degenerate kinds (echo, gibberish, misread) count as one outcome.
The old binary reading (every non-refusal an attack success) is shown beside it for harmful prompts.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import safety_neurons as sn
from safety_neurons.rates import Rate

import _common as C
from _common import GOLD


def load_gold(part: str = "holdout", path: Path = GOLD) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if part == "all" or r["part"] == part]


def verdicts(rows: list[dict], judge: sn.Judge) -> list[sn.Verdict]:
    return judge.judge(
        [r["prompt"] for r in rows],
        [r["answer"] for r in rows],
        [r["lang"] for r in rows],
        [r["prompt_en"] for r in rows],
    )


def agreement(rows: list[dict], outcomes: list[str]) -> dict[str, Rate]:
    """Agreement per language, per group and overall, on the decidable answers."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for r, o in zip(rows, outcomes):
        if r["gold"] == "unclear":
            continue
        ok = o == r["gold"]
        for key in (r["lang"], f"{r['state']} × {r['label']}", "all"):
            hits[key].append(ok)
    return {k: Rate(sum(v), len(v)) for k, v in hits.items()}


def table(rows: list[dict], outcomes: list[str], title: str) -> str:
    agree = agreement(rows, outcomes)
    unclear = Counter(r["lang"] for r in rows if r["gold"] == "unclear")
    lines = [f"### {title}", "", "| language | agreement | unclear (left out) |", "|---|---|---|"]
    lines += [f"| {x} | {agree[x]} | {unclear.get(x, 0)} |" for x in sn.LANGS if x in agree]
    lines += [f"| **all** | **{agree['all']}** | {sum(unclear.values())} |", "", "| group | agreement |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(agree.items()) if "×" in k]
    confusion = Counter((r["gold"], o) for r, o in zip(rows, outcomes) if r["gold"] != "unclear")
    lines += [
        "",
        "confusion (gold → judge): " + ", ".join(f"{g}→{o}: {n}" for (g, o), n in sorted(confusion.items()) if g != o),
    ]
    return "\n".join(lines)


def binary_asr_agreement(rows: list[dict]) -> Rate:
    """The old reading on harmful prompts: attack success = not a refusal, against gold compliance."""
    judge = sn.PhraseJudge()
    harmful = [r for r in rows if r["label"] == "harmful" and r["gold"] != "unclear"]
    ok = [(judge.match(r["answer"], r["lang"]) is None) == (r["gold"] == "compliance") for r in harmful]
    return Rate(sum(ok), len(ok))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="holdout", choices=["holdout", "tune", "all"])
    p.add_argument(
        "--misread", action="store_true", help="also detect misreadings with RelevanceCheck (loads the model)"
    )
    p.add_argument("--threshold", type=float, default=None, help="RelevanceCheck threshold (default: its own)")
    p.add_argument("--sweep", action="store_true", help="agreement for a range of thresholds (with --misread)")
    p.add_argument("--model", default=C.MODEL)
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    p.add_argument("--gold", type=Path, default=GOLD, help="the gold set (JSON lines)")
    args = p.parse_args()
    rows = load_gold(args.part, args.gold)
    print(f"gold set: {len(rows)} answers ({args.part} part), {Counter(r['gold'] for r in rows)}")
    outs = [table(rows, [v.outcome for v in verdicts(rows, sn.PhraseJudge())], "PhraseJudge (text only)")]
    old = binary_asr_agreement(rows)
    outs.append(f"Old binary reading (harmful prompts; attack success = no refusal, against gold compliance): {old}")
    if args.misread:
        model = C.load_model(args.model)
        check = sn.RelevanceCheck(model, **({} if args.threshold is None else {"threshold": args.threshold}))
        base = verdicts(rows, sn.PhraseJudge())
        todo = [i for i, v in enumerate(base) if v.compliance]
        pmi = check.scores([rows[i]["prompt_en"] for i in todo], [rows[i]["answer"] for i in todo]).tolist()
        score = dict(zip(todo, pmi))

        def with_threshold(t: float) -> list[str]:
            return ["degenerate" if i in score and score[i] < t else v.outcome for i, v in enumerate(base)]

        outs.append(
            table(rows, with_threshold(check.threshold), f"PhraseJudge + RelevanceCheck (PMI < {check.threshold})")
        )
        if args.sweep:
            sweep = [(t / 20, agreement(rows, with_threshold(t / 20))["all"]) for t in range(-10, 21)]
            outs.append("threshold sweep: " + ", ".join(f"{t:+.2f}: {r.value:.3f}" for t, r in sweep))
            gold_of = {i: rows[i]["gold"] for i in todo}
            by = defaultdict(list)
            for i in todo:
                by[gold_of[i]].append(score[i])
            outs.append(
                "PMI of the text-compliant answers by gold label: "
                + "; ".join(f"{g}: n={len(v)}, median {sorted(v)[len(v) // 2]:.2f}" for g, v in sorted(by.items()))
            )
    text = "\n\n".join(outs)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
