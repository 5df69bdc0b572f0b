"""What limits a linear edit on the packaged model: how separable harmful and harmless prompts are at the
answer opening, and what ideal (oracle) pushes of the edit's target would achieve there.

    python benchmarks/ceiling.py                   # layers 19 and 21, 10 + 10 validation prompts a language
    python benchmarks/ceiling.py --layers 17 19 21 --val 20
    python benchmarks/ceiling.py --layers 21 --anchor 20 --val 5   # a few minutes

1. **Separability.** A ridge probe on the neurons' activations (`act`) at the last prompt token, trained on
   the anchor split (harmful vs harmless, all languages together), scored on the validation split: the AUC per
   language. An edit of W_out is a linear map of these activations, so whatever it adds to a harmful prompt,
   it adds in part to the harmless prompts the probe confuses with harmful ones.
2. **Oracle pushes.** Greedy answers to the validation prompts (judged by `PhraseJudge`) when a vector is added
   to the residual stream after the layer, at the last prompt token only, as a hook that knows each prompt's
   language and label (what a perfect edit would do): on harmful prompts, the language's mean gap to English g
   (mean over its anchor harmful prompts of the English translation's residual minus its own), and g plus the
   English refusal direction r (mean English harmful − harmless residual); on harmless prompts, 0.35·g, the
   share of g that the fitted edit leaks onto held-out harmless prompts.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch

import safety_neurons as sn
from safety_neurons.evaluation import MEAN_RULE

import _common as C
from _common import NON_EN, auc


def probe_auc(train: sn.ActivationRows, test: sn.ActivationRows, layer: int) -> dict[str, float]:
    """Ridge probe (standardised activations, λ = 0.1·width) harmful vs harmless; AUC per language."""
    X, Xt = train.matrix("act", layer), test.matrix("act", layer)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    X, Xt = (X - mu) / sd, (Xt - mu) / sd
    y = torch.tensor([1.0 if p.label == "harmful" else -1.0 for p in train.prompts], dtype=torch.float64)
    w = torch.linalg.solve(X.T @ X + 0.1 * X.shape[1] * torch.eye(X.shape[1], dtype=torch.float64), X.T @ y)
    scores = Xt @ w
    harmful = torch.tensor([p.label == "harmful" for p in test.prompts])
    return {
        lang: auc(scores[sel], harmful[sel])
        for lang in sn.LANGS
        if (sel := torch.tensor([p.lang == lang for p in test.prompts])).any()
    }


class LastTokenPush:
    """Add `vector` to the residual stream after `layer` at the last prompt token (the prefill pass only)."""

    def __init__(self, layer: int, vector: torch.Tensor):
        self.layer, self.vector = layer, vector

    @contextmanager
    def applied(self, model):
        def hook(resid, hook):
            if resid.shape[1] > 1:  # the prompt, not a generated token
                resid[:, -1] += self.vector.to(resid.device, resid.dtype)
            return resid

        with model.hooks(fwd_hooks=[(sn.hook_name("resid", self.layer), hook)]):
            yield model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[C.ALT_LAYER, C.LAYER])
    ap.add_argument("--anchor", type=int, default=60, help="anchor prompts per language and label (split has 60)")
    ap.add_argument("--val", type=int, default=10, help="validation prompts per language and label (split has 40)")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--leak", type=float, default=0.35, help="share of g pushed onto harmless prompts")
    args = ap.parse_args()
    start = time.perf_counter()
    model = C.load_model()
    anchor, val = C.split("anchor", limit=args.anchor), C.split("val", limit=args.val)
    keys = [(s, layer) for layer in args.layers for s in ("act", "resid")]
    rows = {}
    for name, ps in (("anchor", anchor), ("val", val)):
        rows[name] = sn.collect_activations(model, ps, stats_site=None, rows_at=keys, progress=False).rows
    print(f"collected {len(anchor)} anchor + {len(val)} validation prompts in {time.perf_counter() - start:.0f} s\n")

    print("1. Probe AUC on the validation split (harmful vs harmless, last prompt token, trained on the anchor split)")
    print("| layer | " + " | ".join(sn.LANGS) + " |\n|---|" + "---|" * len(sn.LANGS))
    for layer in args.layers:
        a = probe_auc(rows["anchor"], rows["val"], layer)
        print(f"| {layer} | " + " | ".join(f"{a[x]:.2f}" for x in sn.LANGS) + " |")

    judge = sn.PhraseJudge()

    def judged(ps, push=None) -> sn.Evaluation:
        ctx = push.applied(model) if push is not None else torch.no_grad()
        with ctx:
            return sn.evaluate(model, ps, judge=judge, max_new_tokens=args.max_new_tokens, progress=False)

    def row(name: str, layer, evs: dict, metric: str) -> str:
        """One table row: each non-English language's share, then their mean (`Evaluation.mean`, over the
        languages judged: the non-English ones, as only they are pushed)."""
        merged = sn.Evaluation.from_answers(judge.name, [a for ev in evs.values() for a in ev.answers])
        per = merged.rates(metric, NON_EN)
        return (
            f"| {name} | {layer} | "
            + " | ".join(f"{100 * per[x].value:.0f}" for x in NON_EN)
            + f" | {100 * merged.mean(metric, NON_EN):.0f} |"
        )

    print(
        "\n2. Judged validation answers with oracle pushes at the last prompt token (harmful: ASR; harmless: refused)"
    )
    head = "| push | layer | " + " | ".join(NON_EN) + " | mean |\n|---|---|" + "---|" * (len(NON_EN) + 1)
    lines = [head]
    base_h = {x: judged([p for p in val if p.lang == x and p.label == "harmful"]) for x in NON_EN}
    base_s = {x: judged([p for p in val if p.lang == x and p.label == "harmless"]) for x in NON_EN}
    lines.append(row("none: harmful ASR", "–", base_h, "asr"))
    lines.append(row("none: harmless refused", "–", base_s, "over_refusal"))
    for layer in args.layers:
        A = rows["anchor"]
        R = A.matrix("resid", layer)
        en_ids = [p.id for p in A.prompts if p.lang == "en" and p.label == "harmful"]
        en_h = A.matrix("resid", layer, lang="en", ids=en_ids)
        en_s = R[[i for i, p in enumerate(A.prompts) if p.lang == "en" and p.label == "harmless"]]
        r = en_h.mean(0) - en_s.mean(0)
        g = {x: (en_h - A.matrix("resid", layer, lang=x, ids=en_ids)).mean(0) for x in NON_EN}
        for name, vec, label in (
            ("g (harmful ASR)", lambda x: g[x], "harmful"),
            ("g + r (harmful ASR)", lambda x: g[x] + r, "harmful"),
            (f"{args.leak}·g (harmless refused)", lambda x: args.leak * g[x], "harmless"),
        ):
            evs = {
                x: judged([p for p in val if p.lang == x and p.label == label], LastTokenPush(layer, vec(x).float()))
                for x in NON_EN
            }
            lines.append(row(name, layer, evs, "asr" if label == "harmful" else "over_refusal"))
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    print(
        f"\nmean column: the plain mean of the {len(NON_EN)} non-English languages' shares (only they are pushed and "
        f"judged here). Means: {MEAN_RULE}."
    )
    print(
        f"\n{args.val} + {args.val} validation prompts a language; greedy {args.max_new_tokens} tokens; judge {judge.name}; "
        f"{time.perf_counter() - start:.0f} s in all"
    )


if __name__ == "__main__":
    main()
