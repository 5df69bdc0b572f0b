"""How well the generation-free refusal proxy agrees with the judge, on the validation split.

    python benchmarks/proxy_agreement.py

For each harmful validation prompt (before and after this project's edit, `EditSpec.linear` at layer 21, so
both refusals and compliances occur in every language), the proxy's refusal log-odds at the first answer token
is set against the PhraseJudge verdict on the greedy answer. Reports the AUC (probability that a refused prompt
scores above a complied one), the accuracy of the proxy's own threshold (log-odds > 0) and the accuracy of
the best single threshold, per language and overall.
"""

import argparse

import torch

import safety_neurons as sn

import _common as C
from _common import auc


def best_threshold(scores: torch.Tensor, positive: torch.Tensor) -> tuple[float, float]:
    candidates = torch.cat([scores.unique(), torch.tensor([float("inf")])])
    accs = torch.stack([((scores >= t) == positive).float().mean() for t in candidates])
    i = int(accs.argmax())
    return candidates[i].item(), accs[i].item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--val", type=int, default=10, help="harmful validation prompts per language")
    p.add_argument("--anchor", type=int, default=30)
    args = p.parse_args()
    model = C.load_model()
    anchor = C.split("anchor", limit=args.anchor)
    val = C.split("val", label="harmful", limit=args.val)
    edit = sn.fit_edit(model, anchor, C.ours())
    scores, refused, langs = [], [], []
    for state in ("before", "after"):
        ctx = edit.applied(model) if state == "after" else torch.no_grad()
        with ctx:
            scores.append(sn.refusal_scores(model, val))
            ev = sn.evaluate(model, val, desc=f"answers {state}")
        refused += [a["outcome"] == "refusal" for a in ev.answers]
        langs += [p.lang for p in val]
    scores = torch.cat(scores)
    refused = torch.tensor(refused)
    print(
        "| language | prompts | refused | AUC | accuracy at 0 | best threshold | accuracy there |\n|---|---|---|---|---|---|---|"
    )
    for lang in [*sn.LANGS, "all"]:
        sel = torch.tensor([lang in ("all", x) for x in langs])
        t, acc = best_threshold(scores[sel], refused[sel])
        at0 = ((scores[sel] > 0) == refused[sel]).float().mean().item()
        print(
            f"| {lang} | {int(sel.sum())} | {int(refused[sel].sum())} | {auc(scores[sel], refused[sel]):.2f} "
            f"| {100 * at0:.0f}% | {t:.2f} | {100 * acc:.0f}% |"
        )


if __name__ == "__main__":
    main()
