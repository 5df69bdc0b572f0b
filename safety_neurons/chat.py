"""Chat formatting and tokenisation: the tokenizer's own template, one BOS, left padding with a mask."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from ._checks import as_str_list


@dataclass
class TokenBatch:
    """Left-padded token ids with the mask and position ids that make padding invisible."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]

    @property
    def position_ids(self) -> Int[Tensor, "batch pos"]:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))

    def model_kwargs(self) -> dict:
        return {"attention_mask": self.attention_mask, "position_ids": self.position_ids}


def chat_strings(tokenizer, texts: Sequence[str], *, system: str | None = None) -> list[str]:
    """Each user message rendered with the tokenizer's chat template and the generation prompt."""
    if isinstance(texts, str):
        raise TypeError("chat_strings takes a list of messages, not one string")
    texts = as_str_list("texts", texts, TypeError, allow_empty=True)
    if len(texts) == 0:
        raise ValueError("no prompts given: the list of texts is empty")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; safety-neurons needs a chat (instruct) model")
    out = []
    for text in texts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


def _encode(tokenizer, rendered: str) -> list[int]:
    ids = tokenizer(rendered, add_special_tokens=False).input_ids
    bos = tokenizer.bos_token_id
    if bos is not None:
        # Exactly one BOS: keep the template's own, add it where the tokenizer expects one, drop doubles.
        wants_bos = tokenizer("x", add_special_tokens=True).input_ids[:1] == [bos]
        while len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        if wants_bos and (not ids or ids[0] != bos):
            ids = [bos] + ids
    return ids


def encode_chat(tokenizer, texts: Sequence[str], *, system: str | None = None) -> list[list[int]]:
    """Token ids of each user message, chat-formatted with the generation prompt (exactly one BOS)."""
    return [_encode(tokenizer, s) for s in chat_strings(tokenizer, texts, system=system)]


def template_suffix_length(tokenizer, *, system: str | None = None) -> int:
    """How many tokens the chat template puts after the user's message: the end-of-turn marker and the
    assistant header that opens the answer (5 for ChatML: ``<|im_end|>``, newline, ``<|im_start|>``,
    ``assistant``, newline). The model decides how to answer at these positions, which are the same for
    every prompt."""
    sentinel = "\u2063sentinel\u2063"
    rendered = chat_strings(tokenizer, [sentinel], system=system)[0]
    head = rendered[: rendered.index(sentinel) + len(sentinel)]
    n = len(_encode(tokenizer, rendered)) - len(_encode(tokenizer, head))
    if n < 1:
        raise ValueError("the chat template adds no tokens after the user message; cannot locate the answer opening")
    return n


def tokenize_chat(tokenizer, texts: Sequence[str], *, system: str | None = None) -> TokenBatch:
    """Chat-format and left-pad a batch of user messages."""
    return pad_left(encode_chat(tokenizer, texts, system=system), tokenizer)


class PromptTooLongError(ValueError):
    """A chat-formatted prompt (with the tokens still to generate) does not fit the model's context window."""


def prompt_names(prompts: Sequence) -> list[str]:
    """How an error names each prompt: `lang/id` for a `Prompt`, its position and opening for a string."""
    return [f"{p.lang}/{p.id}" if hasattr(p, "id") else f"#{i} ({str(p)[:30]!r})" for i, p in enumerate(prompts)]


def check_lengths(
    sequences: Sequence[Sequence[int]], n_ctx: int | None, names: Sequence[str] | None = None, *, reserve: int = 0
) -> None:
    """The rule for inputs beyond the model's limits: every sequence, plus the `reserve` tokens still to
    generate, must fit the context window `n_ctx` (the model config's max_position_embeddings); the first one
    that does not is a `PromptTooLongError` naming it and its length, before any forward pass. Nothing is
    cut silently: a cut prompt would be another request."""
    if not n_ctx:
        return
    for i, seq in enumerate(sequences):
        if len(seq) + reserve > n_ctx:
            name = names[i] if names is not None else f"#{i}"
            extra = f" + {reserve} to generate" if reserve else ""
            raise PromptTooLongError(
                f"prompt {name} is {len(seq)} tokens long chat-formatted{extra}; the model's "
                f"context window is {n_ctx} tokens: shorten the prompt or leave it out"
            )


def length_sorted_batches(
    tokenizer,
    texts: Sequence[str],
    batch_size: int,
    *,
    system: str | None = None,
    n_ctx: int | None = None,
    names: Sequence[str] | None = None,
    reserve: int = 0,
) -> Iterator[tuple[list[int], TokenBatch]]:
    """Chat-formatted batches of similar length (far less padding), with each row's index in `texts`.

    Translations differ several-fold in token count (Bengali or Thai against English), so batching in
    the given order would spend most of the compute on padding. With `n_ctx`, every prompt (plus `reserve`
    tokens to generate) must fit the context window (`check_lengths`; `names` name the prompts).
    """
    sequences = encode_chat(tokenizer, texts, system=system)
    check_lengths(sequences, n_ctx, prompt_names(texts) if names is None else names, reserve=reserve)
    return sorted_batches(sequences, tokenizer, batch_size)


def sorted_batches(
    sequences: Sequence[Sequence[int]], tokenizer, batch_size: int
) -> Iterator[tuple[list[int], TokenBatch]]:
    """Left-padded batches of token sequences sorted by length, with each row's index in `sequences`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, pad_left([sequences[i] for i in idx], tokenizer)


def pad_left(sequences: Sequence[Sequence[int]], tokenizer) -> TokenBatch:
    if len(sequences) == 0:
        raise ValueError("no sequences to pad")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            ids[i, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return TokenBatch(ids, mask)
