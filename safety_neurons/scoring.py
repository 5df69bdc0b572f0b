"""Teacher-forced scoring: how likely a model finds a given continuation after a chat-formatted message.

Used by the cloze multiple-choice scorer (each option as the answer to its question) and by the
misreading check of the judges (an answer after the request's English translation vs after a neutral one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .chat import check_lengths, encode_chat, sorted_batches


@torch.no_grad()
def continuation_logprobs(
    model,
    messages: Sequence[str],
    continuations: Sequence[str],
    *,
    max_tokens: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "scoring",
    names: Sequence[str] | None = None,
) -> Float[Tensor, " n"]:
    """Mean log-probability per token of ``continuations[i]`` as the answer to the user message
    ``messages[i]`` (chat template, generation prompt), teacher-forced; the continuation is cut to its first
    ``max_tokens`` tokens. A continuation that encodes to no tokens raises ValueError."""
    if len(messages) != len(continuations):
        raise ValueError(f"{len(messages)} messages but {len(continuations)} continuations")
    if not messages:
        raise ValueError("nothing to score: no messages given")
    tok = model.tokenizer
    unique = sorted(set(messages))  # many continuations share one message (a question's options)
    contexts = dict(zip(unique, encode_chat(tok, unique)))
    seqs, lengths = [], []
    for i, (message, text) in enumerate(zip(messages, continuations)):
        ids = tok(text, add_special_tokens=False).input_ids[:max_tokens]
        if not ids:
            raise ValueError(f"continuation {i} ({text[:40]!r}) encodes to no tokens")
        seqs.append(contexts[message] + ids)
        lengths.append(len(ids))
    check_lengths(seqs, model.cfg.n_ctx, names)
    out = torch.empty(len(seqs))
    device = model.cfg.device
    for idx, batch in tqdm(
        sorted_batches(seqs, tok, batch_size),
        total=-(-len(seqs) // batch_size),
        desc=desc,
        disable=not progress,
        unit="batch",
    ):
        batch = batch.to(device)
        width = max(lengths[i] for i in idx)
        # logits at the last width+1 positions; position t predicts token t+1
        logp = model(batch.input_ids, logits_to_keep=width + 1, **batch.model_kwargs())[:, :-1].float().log_softmax(-1)
        token_lp = logp.gather(-1, batch.input_ids[:, -width:, None])[..., 0].cpu()
        for row, i in enumerate(idx):
            out[i] = token_lp[row, width - lengths[i] :].mean()
    return out
