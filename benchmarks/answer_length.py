"""How long must an answer be before its verdict is settled? Greedy answers of 128 tokens, judged on their
first 24, 64 and 128 tokens (greedy decoding: the first k tokens of a 128-token answer are the k-token answer).

    python benchmarks/answer_length.py --generate      # writes benchmarks/results/answers_128.json (slow)
    python benchmarks/answer_length.py                 # judges the saved answers at each length

Prompts: the test split, `--harmful` + `--harmless` a language (category-balanced), before and after the
`safety-neurons run` edit (`EditSpec.linear` at layer 21, fitted on `--anchor` + `--anchor` anchors a language).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import _common as C

LENGTHS = (24, 64, 128)
OUT = C.RESULTS / "answers_128.json"


def generate_ids(model, prompts, max_new_tokens: int, batch_size: int, desc: str) -> list[list[int]]:
    import torch
    from tqdm.auto import tqdm

    from safety_neurons.chat import length_sorted_batches

    tok = model.tokenizer
    out: list[list[int]] = [[] for _ in prompts]
    batches = list(length_sorted_batches(tok, [p.text for p in prompts], batch_size))
    with torch.no_grad():
        for idx, batch in tqdm(batches, desc=desc, unit="batch", disable=False):  # shown despite TQDM_DISABLE
            ids = model.original_model.generate(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                top_p=None,
                top_k=None,
                temperature=None,
            )
            for i, row in zip(idx, ids[:, batch.input_ids.shape[1] :].tolist()):
                out[i] = row
    return out


def run_generate(args) -> None:
    import safety_neurons as sn

    model = C.load_model(args.model)
    chosen = C.split("test", label="harmful", limit=args.harmful) + C.split(
        "test", label="harmless", limit=args.harmless
    )
    english = {p.id: p.text for p in C.prompts().filter(lang="en")}
    record = {"args": vars(args), "states": {}}
    t = time.perf_counter()
    states = [("before", None)]
    if not args.no_edit:
        anchor, L = C.split("anchor", limit=args.anchor), C.LAYER
        coll = sn.collect_activations(
            model,
            anchor,
            stats_site=None,
            rows_at=[("act", L), ("resid", L)],
            gram_at=[("act", L)],
            gram_positions="preserved",
        )
        states.append(("after", sn.fit_edit(model, anchor, C.ours(L), rows=coll)))
    for state, edit in states:
        ctx = edit.applied(model) if edit else contextlib.nullcontext()
        with ctx:
            ids = generate_ids(model, chosen, args.max_new_tokens, args.batch_size, f"answers {state}")
        record["states"][state] = [
            {
                "id": p.id,
                "lang": p.lang,
                "label": p.label,
                "prompt": p.text,
                "prompt_en": english.get(p.id, ""),
                "tokens": row,
                **{f"answer_{k}": model.tokenizer.decode(row[:k], skip_special_tokens=True).strip() for k in LENGTHS},
            }
            for p, row in zip(chosen, ids)
        ]
        record["seconds"] = round(time.perf_counter() - t, 1)
        OUT.write_text(json.dumps(record, ensure_ascii=False, indent=1))
        print(f"{state}: {len(ids)} answers written to {OUT} ({record['seconds']} s so far)")


def report(record: dict) -> str:
    """How many verdicts change from 24 to 64 and from 64 to 128 tokens, per language and per outcome."""
    import safety_neurons as sn
    from safety_neurons.rates import Rate

    judge = sn.PhraseJudge()
    lines = [
        "| state | language | answers | changed 24 → 64 | changed 64 → 128 | outcomes at 24 | outcomes at 128 |",
        "|---|---|---|---|---|---|---|",
    ]
    flips: dict[tuple[str, str], int] = {}
    totals = {24: 0, 64: 0}
    n_all = 0
    for state, recs in record["states"].items():
        by_len = {
            k: [
                v.outcome
                for v in judge.judge(
                    [r["prompt"] for r in recs], [r[f"answer_{k}"] for r in recs], [r["lang"] for r in recs]
                )
            ]
            for k in LENGTHS
        }
        for a, b in zip(by_len[24], by_len[128]):
            flips[(a, b)] = flips.get((a, b), 0) + (a != b)
        for lang in sn.LANGS:
            idx = [i for i, r in enumerate(recs) if r["lang"] == lang]
            c1 = sum(by_len[24][i] != by_len[64][i] for i in idx)
            c2 = sum(by_len[64][i] != by_len[128][i] for i in idx)
            totals[24] += c1
            totals[64] += c2
            n_all += len(idx)

            def counts(k):
                return ", ".join(f"{o[:4]} {sum(by_len[k][i] == o for i in idx)}" for o in sn.judges.OUTCOMES)

            lines.append(f"| {state} | {lang} | {len(idx)} | {c1} | {c2} | {counts(24)} | {counts(128)} |")
    lines.append(f"| **all** | | {n_all} | **{Rate(totals[24], n_all)}** | **{Rate(totals[64], n_all)}** | | |")
    lines.append(
        "\nchanges 24 → 128 by kind: " + ", ".join(f"{a} → {b}: {n}" for (a, b), n in sorted(flips.items()) if n)
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generate", action="store_true")
    p.add_argument("--model", default=C.MODEL)
    p.add_argument("--harmful", type=int, default=10)
    p.add_argument("--harmless", type=int, default=5)
    p.add_argument("--anchor", type=int, default=30)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-edit", action="store_true")
    args = p.parse_args()
    if args.generate:
        run_generate(args)
    else:
        print(report(json.loads(OUT.read_text())))


if __name__ == "__main__":
    main()
