"""Shared fixtures: tiny random Llama / Qwen2 chat models (milliseconds) and the packaged real models."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import safety_neurons as sn

torch.set_num_threads(1)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a few hundred words, with a chat template."""
    words = [f"w{i}" for i in range(200)] + [
        "user",
        "assistant",
        "system",
        "How",
        "do",
        "I",
        "make",
        "a",
        "bomb",
        "cake",
        "?",
        "sorry",
        "Sure",
        "can't",
        "help",
        ".",
        "A",
        "B",
        "C",
        "D",
    ]
    special = ["<pad>", "<bos>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(special + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        from tokenizers import processors

        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        bos_token="<bos>" if bos else None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHAT_TEMPLATE if not bos else "<bos>" + CHAT_TEMPLATE
    # TransformerLens re-reads tokenizers from their folder: give this one a folder.
    folder = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def tiny_hf_model(arch: str, vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
    )
    if arch == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=False)
        cfg.architectures = ["LlamaForCausalLM"]
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**common, tie_word_embeddings=True)
        cfg.architectures = ["Qwen2ForCausalLM"]
        model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # default init gives near-flat logits: make the model opinionated
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.15)
    return model.eval()


def rig_first_token(model, tokenizer, word: str, strength: float = 50.0) -> None:
    """Make a tiny model's next token almost always `word`: a constant residual dimension that no layer
    writes to, read out by the unembedding row of `word` only."""
    target = tokenizer.convert_tokens_to_ids(word)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 100.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        head = model.lm_head.weight
        if model.config.tie_word_embeddings:
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(head.detach().clone())
            head = model.lm_head.weight
        head[:, 0] = 0.0
        head[target, 0] = strength


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request):
    """(bridge, hf_model, tokenizer) for a tiny random model; the bridge wraps the same HF modules."""
    tok = tiny_tokenizer(bos=request.param == "llama")
    hf = tiny_hf_model(request.param, len(tok))
    bridge = sn.bridge_from_hf(hf, tok, name=f"tiny-{request.param}")
    return bridge, hf, tok


def make_prompts(n_per_group: int = 5, langs=("en", "zh"), seed: int = 0) -> list[sn.Prompt]:
    """Random word prompts of varied length, parallel ids across languages."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for label in ("harmful", "harmless"):
        for i in range(n_per_group):
            for lang in langs:
                n = int(torch.randint(2, 9, (1,), generator=g))
                words = " ".join(f"w{int(j)}" for j in torch.randint(0, 200, (n,), generator=g))
                out.append(sn.Prompt(f"{label}-{i}", lang, label, words))
    return out


def _real_model_threads() -> None:
    """Tiny models run fastest on one thread; the packaged models use the machine (CI has 2 cores)."""
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def qwen():
    _real_model_threads()
    return sn.load_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def smollm():
    _real_model_threads()
    return sn.load_model("smollm2-135m-instruct")
