"""Chat formatting: the tokenizer's template, exactly one BOS, left padding with a mask."""

import pytest

import safety_neurons as sn

from conftest import tiny_tokenizer


@pytest.mark.parametrize("bos", [False, True])
def test_exactly_one_bos_and_generation_prompt(bos):
    tok = tiny_tokenizer(bos=bos)
    batch = sn.tokenize_chat(tok, ["How do I make a cake ?"])
    ids = batch.input_ids[0].tolist()
    bos_id = tok.convert_tokens_to_ids("<bos>")
    assert ids.count(bos_id) == (1 if bos else 0)
    if bos:
        assert ids[0] == bos_id
    tail = tok.convert_tokens_to_ids(["<|im_start|>", "assistant"])
    assert ids[-2:] == tail  # the generation prompt is appended


def test_left_padding_and_mask():
    tok = tiny_tokenizer()
    batch = sn.tokenize_chat(tok, ["w1", "w1 w2 w3 w4 w5"])
    assert batch.input_ids.shape == batch.attention_mask.shape
    short, long = batch.attention_mask.tolist()
    assert long == [1] * len(long)
    n_pad = short.count(0)
    assert n_pad == 4 and short[:n_pad] == [0] * n_pad  # padding on the left
    assert (batch.input_ids[0, :n_pad] == tok.pad_token_id).all()
    pos = batch.position_ids[0]
    assert pos[n_pad:].tolist() == list(range(len(short) - n_pad))


def test_chat_strings_errors():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="empty"):
        sn.chat_strings(tok, [])
    with pytest.raises(TypeError, match="list"):
        sn.chat_strings(tok, "one string")
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        sn.chat_strings(tok, ["hi"])


def test_system_prompt_is_used():
    tok = tiny_tokenizer()
    (s,) = sn.chat_strings(tok, ["w1"], system="w9")
    assert s.startswith("<|im_start|>system\nw9")


def test_template_suffix_length_counts_the_tokens_after_the_message():
    tok = tiny_tokenizer()
    n = sn.chat.template_suffix_length(tok)
    short, long = sn.chat.encode_chat(tok, ["w1", "w1 w2 w3 cake"])
    assert n == 3  # <|im_end|> <|im_start|> assistant (this word-level tokenizer drops newlines)
    assert short[-n:] == long[-n:]
    assert tok.convert_ids_to_tokens(short[-n - 1]) == "w1" and tok.convert_ids_to_tokens(long[-n - 1]) == "cake"
