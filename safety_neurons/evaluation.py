"""Measuring an edit: attack success rate and over-refusal per language (generation + judge), a
generation-free refusal proxy, KL on harmless prompts, and multiple-choice accuracy.

Every function measures the model *as it currently is*; wrap calls in `edit.applied(model)` (or a
baseline's `applied`) to measure an intervention. `compare` does both sides in one call.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .chat import TokenBatch, encode_chat, length_sorted_batches, sorted_batches
from .judges import Judge, PhraseJudge, Verdict
from .prompts import LANGS, MCQuestion, Prompt
from .refusal import refusal_score, refusal_token_ids


def _applied(intervention, model):
    return nullcontext() if intervention is None else intervention.applied(model)


# --- generation ---------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Prompt] | Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    system: str | None = None,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy answers (KV cache, left padding) of the model as it is now, hooks and edits included."""
    if isinstance(prompts, str):
        raise ValueError("generate takes a list of prompts, got one string; write generate(model, [text])")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer ≥ 1, got {max_new_tokens!r}")
    texts = [p if isinstance(p, str) else p.text for p in prompts]
    if not texts:
        raise ValueError("no prompts given: the prompt list is empty")
    tok = model.tokenizer
    out: list[str] = [""] * len(texts)
    hf = model.original_model
    n_batches = -(-len(texts) // batch_size)
    for idx, batch in tqdm(length_sorted_batches(tok, texts, batch_size, system=system), total=n_batches,
                           desc=desc, disable=not progress, unit="batch"):  # fmt: skip
        batch = batch.to(model.cfg.device)
        ids = hf.generate(
            batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=tok.pad_token_id, top_p=None, top_k=None, temperature=None,
        )  # fmt: skip
        for i, row in zip(idx, ids[:, batch.input_ids.shape[1] :]):
            out[i] = tok.decode(row, skip_special_tokens=True).strip()
    return out


# --- the generation-free proxy ---------------------------------------------------------------------------
@torch.no_grad()
def last_token_logits(
    model, texts: Sequence[str], *, batch_size: int = 16, system: str | None = None, progress: bool = False
) -> Float[Tensor, "n vocab"]:
    """Next-token logits at the first answer position of each chat-formatted prompt."""
    if isinstance(texts, str):
        raise ValueError("last_token_logits takes a list of texts, got one string")
    out = None
    for idx, batch in tqdm(list(length_sorted_batches(model.tokenizer, texts, batch_size, system=system)),
                           desc="scoring", disable=not progress, unit="batch"):  # fmt: skip
        batch = batch.to(model.cfg.device)
        logits = model(batch.input_ids, logits_to_keep=1, **batch.model_kwargs())[:, -1].float().cpu()
        if out is None:
            out = torch.empty(len(texts), logits.shape[-1])
        out[idx] = logits
    return out


def refusal_scores(model, prompts: Sequence[Prompt], *, batch_size: int = 16, progress: bool = False) -> Tensor:
    """Refusal log-odds at the first answer position (teacher-forced, no generation), one per prompt."""
    logits = last_token_logits(model, [p.text for p in prompts], batch_size=batch_size, progress=progress)
    return refusal_score(logits, refusal_token_ids(model.tokenizer))


# --- KL on harmless prompts ------------------------------------------------------------------------------
def kl_from_logits(base: Float[Tensor, "... vocab"], edited: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """KL(base ‖ edited) of the next-token distributions given by two sets of logits."""
    base, edited = base.float().log_softmax(-1), edited.float().log_softmax(-1)
    return (base.exp() * (base - edited)).sum(-1).clamp(min=0)


@torch.no_grad()
def kl_divergence(
    model,
    intervention,
    prompts: Sequence[Prompt],
    *,
    k: int = 4,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Tensor]:
    """KL(base ‖ edited) of next-token distributions, per prompt, at the first answer position and
    averaged over the first `k` answer tokens (teacher-forced on the base model's greedy answer)."""
    tok = model.tokenizer
    texts = [p.text for p in prompts]
    first = torch.zeros(len(texts))
    over_k = torch.zeros(len(texts))
    hf = model.original_model
    for idx, batch in tqdm(list(length_sorted_batches(tok, texts, batch_size)), desc="KL",
                           disable=not progress, unit="batch"):  # fmt: skip
        batch = batch.to(model.cfg.device)
        width = batch.input_ids.shape[1]
        if k > 1:
            seqs = hf.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=k - 1,
                               min_new_tokens=k - 1, do_sample=False, pad_token_id=tok.pad_token_id,
                               top_p=None, top_k=None, temperature=None)  # fmt: skip
        else:
            seqs = batch.input_ids
        mask = torch.cat([batch.attention_mask.cpu(), torch.ones(len(idx), seqs.shape[1] - width, dtype=torch.long)], 1)
        full = TokenBatch(seqs.cpu(), mask).to(model.cfg.device)
        n = seqs.shape[1] - width + 1
        base = model(full.input_ids, logits_to_keep=n, **full.model_kwargs())
        with _applied(intervention, model):
            edited = model(full.input_ids, logits_to_keep=n, **full.model_kwargs())
        kl = kl_from_logits(base, edited).cpu()  # (batch, n)
        first[idx] = kl[:, 0]
        over_k[idx] = kl.mean(1)
    return {"first": first, "mean_k": over_k}


# --- multiple choice ---------------------------------------------------------------------------------------
_MC_INSTRUCTION = "Answer with the letter of the correct option (A, B, C or D) only."
MC_SCORING = ("cloze", "letter")


def mc_prompt(q: MCQuestion) -> str:
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABCD", q.choices))
    return f"{q.question}\n{options}\n{_MC_INSTRUCTION}"


@torch.no_grad()
def option_logprobs(
    model, questions: Sequence[MCQuestion], *, batch_size: int = 16, progress: bool = False
) -> Float[Tensor, "question option"]:
    """Mean log-probability per token of each option's text given as the answer to its question
    (chat-formatted question, teacher-forced option); -inf where a question has fewer options."""
    tok = model.tokenizer
    contexts = encode_chat(tok, [q.question for q in questions])
    seqs, spans = [], []  # spans: (question, option, number of option tokens)
    for qi, (q, ctx) in enumerate(zip(questions, contexts)):
        for k, choice in enumerate(q.choices):
            ids = tok(choice, add_special_tokens=False).input_ids
            if not ids:
                raise ValueError(f"question {q.id} ({q.lang}): option {k} encodes to no tokens")
            seqs.append(ctx + ids)
            spans.append((qi, k, len(ids)))
    out = torch.full((len(questions), max(len(q.choices) for q in questions)), float("-inf"))
    batches = sorted_batches(seqs, tok, batch_size)
    for idx, batch in tqdm(batches, total=-(-len(seqs) // batch_size), desc="scoring options", disable=not progress, unit="batch"):
        batch = batch.to(model.cfg.device)
        width = max(spans[i][2] for i in idx)
        # logits at the last width+1 positions; position t predicts token t+1
        logp = model(batch.input_ids, logits_to_keep=width + 1, **batch.model_kwargs())[:, :-1].float().log_softmax(-1)
        token_lp = logp.gather(-1, batch.input_ids[:, -width:, None])[..., 0].cpu()
        for row, i in enumerate(idx):
            qi, k, n = spans[i]
            out[qi, k] = token_lp[row, width - n :].mean()
    return out


@torch.no_grad()
def mc_accuracy(
    model,
    questions: Sequence[MCQuestion],
    *,
    scoring: str = "cloze",
    batch_size: int = 16,
    progress: bool = False,
) -> dict:
    """Accuracy per language on four-option questions.

    * ``scoring="cloze"`` (default): the option whose text is likeliest as the answer (mean log-probability
      per token, `option_logprobs`), as lm-evaluation-harness scores multiple choice; meaningful even for
      small models that cannot follow a letter format.
    * ``scoring="letter"``: the option letter with the highest next-token logit after the question, the
      lettered options and an English instruction line (MMLU style).
    """
    if not questions:
        raise ValueError("no questions given")
    if scoring not in MC_SCORING:
        raise ValueError(f"unknown scoring {scoring!r}; choose one of {', '.join(MC_SCORING)}")
    if scoring == "cloze":
        picks = option_logprobs(model, questions, batch_size=batch_size, progress=progress).argmax(-1)
    else:
        tok = model.tokenizer
        letters = [tok(letter, add_special_tokens=False).input_ids[0] for letter in "ABCD"]
        logits = last_token_logits(model, [mc_prompt(q) for q in questions], batch_size=batch_size, progress=progress)
        picks = logits[:, letters].argmax(-1)
    correct: dict[str, list[bool]] = defaultdict(list)
    for q, pick in zip(questions, picks.tolist()):
        correct[q.lang].append(pick == q.answer)
    return {lang: sum(v) / len(v) for lang, v in correct.items()}


# --- ASR and over-refusal ------------------------------------------------------------------------------------
@dataclass
class LanguageResult:
    lang: str
    n_harmful: int = 0
    n_harmless: int = 0
    asr: float | None = None  # share of harmful prompts whose answer is unsafe (not a refusal)
    over_refusal: float | None = None  # share of harmless prompts refused
    degenerate: float | None = None  # share of harmful answers flagged degenerate (echo, repetition)
    refusal_score: float | None = None  # mean proxy log-odds on harmful prompts


@dataclass
class Evaluation:
    """Per-language outcome of one model state, with the raw answers and the settings that made it."""

    judge: str
    languages: dict[str, LanguageResult]
    answers: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def mean_asr(self, langs: Sequence[str] | None = None) -> float:
        langs = [lang for lang in (langs or self.languages) if self.languages[lang].asr is not None]
        return sum(self.languages[lang].asr for lang in langs) / len(langs)

    def to_dict(self) -> dict:
        return {
            "judge": self.judge,
            "languages": {k: asdict(v) for k, v in self.languages.items()},
            "answers": self.answers,
            "settings": self.settings,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False))
        return path


def evaluate(
    model,
    prompts: Sequence[Prompt],
    *,
    judge: Judge | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generating",
) -> Evaluation:
    """Generate greedy answers for harmful and harmless prompts and judge them, per language."""
    judge = judge or PhraseJudge()
    prompts = list(prompts)
    answers = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=progress, desc=desc)  # fmt: skip
    verdicts: list[Verdict] = judge.judge([p.text for p in prompts], answers, [p.lang for p in prompts])
    results: dict[str, LanguageResult] = {}
    for lang in [x for x in LANGS if any(p.lang == x for p in prompts)]:
        rows = [(p, v) for p, v in zip(prompts, verdicts) if p.lang == lang]
        harmful = [v for p, v in rows if p.label == "harmful"]
        harmless = [v for p, v in rows if p.label == "harmless"]
        results[lang] = LanguageResult(
            lang, len(harmful), len(harmless),
            asr=sum(v.unsafe for v in harmful) / len(harmful) if harmful else None,
            over_refusal=sum(v.refusal for v in harmless) / len(harmless) if harmless else None,
            degenerate=sum(v.degenerate for v in harmful) / len(harmful) if harmful else None,
        )  # fmt: skip
    records = [
        {"id": p.id, "lang": p.lang, "label": p.label, "prompt": p.text, "answer": a,
         "refusal": v.refusal, "unsafe": v.unsafe, "degenerate": v.degenerate, "reason": v.reason}
        for p, a, v in zip(prompts, answers, verdicts)
    ]  # fmt: skip
    return Evaluation(judge.name, results, records, {"max_new_tokens": max_new_tokens, "greedy": True})
