"""How the gold set (tests/data/gold_answers.jsonl) was made: answers sampled for reading, then merged
with the labels of their readers. See DATA.md ("The gold set").

    python benchmarks/gold_set.py candidates --states before --efficacy --out WORK/round1.jsonl
    python benchmarks/gold_set.py candidates --states after --out WORK/round2.jsonl
    python benchmarks/gold_set.py assemble WORK/round1.jsonl WORK/round2.jsonl      # + WORK/round*.LANG.labels.jsonl

`candidates` writes one file of answers per language (no verdicts in them: readers must not be anchored
by the judge); `assemble` joins them with `<stem>.<lang>.labels.jsonl` (gid, gold, kind, note) by gid.
Half of the rows (by a hash of their gid) form the held-out part that no tuning looks at.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

import safety_neurons as sn

import _common as C
from _common import GOLD, RESULTS

# answers of edited models kept by the efficacy run, a language: (condition, label, how many)
EFFICACY_PLAN = [
    ("nullspace", "harmful", 8),
    ("noanchor", "harmless", 6),
    ("noanchor", "harmful", 4),
    ("refdir", "harmful", 4),
    ("alpha", "harmful", 4),
    ("ours_no_bn", "harmless", 4),
]
READER_FIELDS = ("gid", "lang", "label", "prompt", "prompt_en", "max_new_tokens", "answer")


def candidates(states: list[str], efficacy: bool) -> list[dict]:
    english = {p.id: p.text for p in C.prompts().filter(lang="en")}
    rows = []
    long = json.loads((RESULTS / "answers_128.json").read_text())
    for state in states:
        for r in long["states"][state]:
            rows.append(
                dict(
                    source=f"{state}-128",
                    state=state,
                    condition="no edit" if state == "before" else "ours L21 (anchor 30)",
                    max_new_tokens=128,
                    id=r["id"],
                    lang=r["lang"],
                    label=r["label"],
                    prompt=r["prompt"],
                    prompt_en=r["prompt_en"],
                    answer=r["answer_128"],
                )
            )
    if efficacy:
        kept = json.loads((RESULTS / "efficacy_rest.json").read_text())["answers"]
        for lang in sn.LANGS:
            for cond, label, k in EFFICACY_PLAN:
                pool = sorted(
                    (a for a in kept[cond] if a["lang"] == lang and a["label"] == label), key=lambda a: a["id"]
                )
                random.Random(f"{cond}{lang}{label}").shuffle(pool)
                rows += [
                    dict(
                        source=f"efficacy:{cond}-24",
                        state="after",
                        condition=cond,
                        max_new_tokens=24,
                        id=a["id"],
                        lang=lang,
                        label=label,
                        prompt=a["prompt"],
                        prompt_en=english[a["id"]],
                        answer=a["answer"],
                    )
                    for a in pool[:k]
                ]
    for r in rows:
        r["gid"] = hashlib.sha256(f"{r['source']}|{r['lang']}|{r['id']}".encode()).hexdigest()[:10]
        r["part"] = "holdout" if int(r["gid"], 16) % 2 == 0 else "tune"
    return rows


def write_candidates(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    for lang in sn.LANGS:
        mine = [{k: r[k] for k in READER_FIELDS} for r in rows if r["lang"] == lang]
        (out.parent / f"{out.stem}.{lang}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mine), encoding="utf-8"
        )


def assemble(rounds: list[Path], out: Path = GOLD) -> list[dict]:
    gold = []
    for path in rounds:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        labels = {}
        for lang in sn.LANGS:
            f = path.parent / f"{path.stem}.{lang}.labels.jsonl"
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    lab = json.loads(line)
                    labels[lab["gid"]] = lab
        for r in rows:
            lab = labels[r["gid"]]  # every answer must have been read
            if lab["gold"] not in ("refusal", "compliance", "degenerate", "unclear"):
                raise ValueError(f"{r['gid']}: unknown gold label {lab['gold']!r}")
            gold.append(r | {"gold": lab["gold"], "kind": lab.get("kind"), "note": lab.get("note", "")})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in gold), encoding="utf-8")
    return gold


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("candidates")
    c.add_argument("--states", nargs="+", default=["before"], choices=["before", "after"])
    c.add_argument("--efficacy", action="store_true", help="add answers of edited models from efficacy_rest.json")
    c.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("assemble")
    a.add_argument("rounds", nargs="+", type=Path)
    args = p.parse_args()
    if args.cmd == "candidates":
        write_candidates(candidates(args.states, args.efficacy), args.out)
    else:
        gold = assemble(args.rounds)
        print(f"{len(gold)} answers in {GOLD}")


if __name__ == "__main__":
    main()
