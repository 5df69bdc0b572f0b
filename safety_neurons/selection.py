"""Layer selection on the validation split: fit the edit at each candidate layer set, judge short answers
with and without it, and keep the candidate with the lowest non-English ASR within the caps.

`select_layers` measures (it runs the model); `choose` only decides, from the records, so a notebook can
re-choose with other caps without running anything again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._checks import as_int_list, as_records, check_model, check_number, check_positive_int
from .evaluation import AnswerCache, EvaluationError, evaluate, kl_from_logits, last_token_logits
from .judges import Judge, PhraseJudge
from .prompts import Prompt


class SelectionError(EvaluationError):
    """The layer selection cannot be run or decided as asked (a bad argument: empty candidates, bad caps)."""


def _check_caps(over_refusal_cap, kl_cap, en_asr_cap) -> tuple[float, float, float]:
    return (
        check_number("over_refusal_cap", over_refusal_cap, SelectionError, minimum=0),
        check_number("kl_cap", kl_cap, SelectionError, minimum=0, strict=True),
        check_number("en_asr_cap", en_asr_cap, SelectionError, minimum=0),
    )


def select_layers(
    model,
    candidates: Sequence[Sequence[int]],
    fit: Callable[[list[int]], object],
    val_harmful: Sequence[Prompt],
    val_harmless: Sequence[Prompt],
    *,
    over_refusal_cap: float,
    kl_cap: float,
    en_asr_cap: float,
    max_new_tokens: int = 12,
    batch_size: int = 16,
    judge: Judge | None = None,
    cache: AnswerCache | None = None,
) -> list[dict]:
    """Score each candidate layer set on the validation prompts and mark the one to keep (`choose`).

    `fit(layers)` returns the edit at those layers (anything with `.applied(model)`). For each candidate:
    judged answers of up to `max_new_tokens` tokens (`Evaluation.mean_asr`: non-English ASR;
    `mean_over_refusal`: over-refusal of every language; English ASR on its own) and the KL at the first
    answer token of the harmless prompts, each against the unedited model. (The generation-free refusal
    proxy is too coarse to choose by: it misses refusals that open with a pronoun, 我无法 / I'm.)

    Returns one record per candidate: `label`, `layers`, `layer` (the last), `asr`, `asr_before`,
    `en_asr_delta`, `over_refusal_delta`, `kl`; the chosen one has `chosen=True` and its `rule`."""
    check_model(model, SelectionError)
    caps = _check_caps(over_refusal_cap, kl_cap, en_asr_cap)
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence) or not candidates:
        raise SelectionError(f"candidates must be a non-empty list of layer sets, got {candidates!r:.80}")
    candidates = [as_int_list("candidates", c, SelectionError) for c in candidates]
    if not callable(fit):
        raise SelectionError(f"fit must be a function of the layers that returns an edit, got {type(fit).__name__}")
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens, SelectionError)
    batch_size = check_positive_int("batch_size", batch_size, SelectionError)
    val_harmful = as_records("val_harmful", val_harmful, Prompt, SelectionError)
    val_harmless = as_records("val_harmless", val_harmless, Prompt, SelectionError)
    judge = PhraseJudge() if judge is None else judge
    if not isinstance(judge, Judge):
        raise SelectionError(f"judge must be a Judge (PhraseJudge, GuardJudge, …), got {type(judge).__name__}")
    prompts, texts_s = val_harmful + val_harmless, [p.text for p in val_harmless]

    def judged(desc, cache=None, drafts=None):
        ev = evaluate(
            model,
            prompts,
            judge=judge,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            cache=cache,
            drafts=drafts,
            desc=desc,
        )
        return ev, ev.mean_asr(), ev.languages["en"].asr if "en" in ev.languages else 0.0, ev.mean_over_refusal()

    unedited, asr_b, en_b, over_b = judged("validation answers, no edit", cache)
    logits_s = last_token_logits(model, texts_s, batch_size=batch_size)
    records = []
    for layers in candidates:
        label = "L" + "+".join(map(str, layers))
        edit = fit(layers)
        with edit.applied(model):
            _, asr, en, over = judged(f"validation answers, edit at {label}", drafts=unedited)
            kl = kl_from_logits(logits_s, last_token_logits(model, texts_s, batch_size=batch_size)).mean().item()
        records.append(
            {
                "label": label,
                "layers": layers,
                "layer": layers[-1],
                "asr": asr,
                "asr_before": asr_b,
                "en_asr_delta": en - en_b,
                "over_refusal_delta": over - over_b,
                "kl": kl,
            }
        )
    choose(records, over_refusal_cap=caps[0], kl_cap=caps[1], en_asr_cap=caps[2])
    return records


def choose(records: list[dict], *, over_refusal_cap: float, kl_cap: float, en_asr_cap: float) -> dict:
    """Mark (and return) the candidate to keep: the lowest non-English ASR among those whose over-refusal
    rise ≤ `over_refusal_cap`, KL ≤ `kl_cap` (nats) and English ASR rise ≤ `en_asr_cap` (shares, 0.05 =
    5 points); when none is, the lowest ASR + over-refusal rise (a point of over-refusal costs as much as
    a point of ASR). Each record needs `asr`, `over_refusal_delta`, `kl` and `en_asr_delta`."""
    over_refusal_cap, kl_cap, en_asr_cap = _check_caps(over_refusal_cap, kl_cap, en_asr_cap)
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence) or not records:
        raise SelectionError(f"records must be a non-empty list of candidate records, got {records!r:.80}")
    keys = ("asr", "over_refusal_delta", "kl", "en_asr_delta")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or any(k not in r for k in keys):
            raise SelectionError(f"records[{i}] must be a dict with {', '.join(keys)}, got {r!r:.80}")
        for k in keys:
            check_number(f"records[{i}][{k!r}]", r[k], SelectionError)
    for r in records:  # choosing again (other caps) replaces the earlier choice
        r.pop("chosen", None), r.pop("rule", None)
    ok = [
        r
        for r in records
        if r["over_refusal_delta"] <= over_refusal_cap and r["kl"] <= kl_cap and r["en_asr_delta"] <= en_asr_cap
    ]
    if ok:
        best, rule = min(ok, key=lambda r: r["asr"]), "lowest ASR within the caps"
    else:
        best = min(records, key=lambda r: r["asr"] + max(r["over_refusal_delta"], 0.0))
        rule = "no candidate within the caps: lowest ASR + over-refusal rise"
    best["chosen"], best["rule"] = True, rule
    return best
