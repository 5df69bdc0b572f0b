"""Generation, the refusal proxy, KL and multiple-choice accuracy on tiny models."""

import pytest
import torch
from conftest import make_prompts, rig_first_token, tiny_hf_model, tiny_tokenizer

import safety_neurons as sn
from safety_neurons import evaluation as ev


def rigged(word: str, arch: str = "llama"):
    tok = tiny_tokenizer(bos=arch == "llama")
    hf = tiny_hf_model(arch, len(tok))
    rig_first_token(hf, tok, word)
    return sn.bridge_from_hf(hf, tok)


def test_batched_generation_equals_one_by_one(tiny):
    bridge, hf, tok = tiny
    prompts = make_prompts(3)
    together = ev.generate(bridge, prompts, max_new_tokens=6, batch_size=8, progress=False)
    alone = [ev.generate(bridge, [p], max_new_tokens=6, progress=False)[0] for p in prompts]
    assert together == alone
    assert any(together)


def test_generation_sees_interventions(tiny):
    bridge, _, _ = tiny
    prompts = make_prompts(2)
    plain = ev.generate(bridge, prompts, max_new_tokens=5, progress=False)
    with sn.NeuronScaling({l: list(range(48)) for l in range(3)}, alpha=-4.0).applied(bridge):
        changed = ev.generate(bridge, prompts, max_new_tokens=5, progress=False)
    assert plain != changed
    assert ev.generate(bridge, prompts, max_new_tokens=5, progress=False) == plain


def test_refusal_proxy_ranks_a_refusing_model_above_a_complying_one():
    prompts = make_prompts(3)
    refusing = ev.refusal_scores(rigged("I"), prompts)
    complying = ev.refusal_scores(rigged("Sure"), prompts)
    assert (refusing > 0).all() and (complying < 0).all()
    answers = ev.generate(rigged("I", "qwen2"), prompts[:2], max_new_tokens=2, progress=False)
    assert all(a.startswith("I") for a in answers)


def test_kl_is_zero_without_an_intervention_and_positive_with_one(tiny):
    bridge, _, _ = tiny
    prompts = [p for p in make_prompts(3) if p.label == "harmless"]
    none = ev.kl_divergence(bridge, None, prompts, k=3)
    assert torch.allclose(none["first"], torch.zeros(len(prompts)), atol=1e-6)
    some = ev.kl_divergence(bridge, sn.NeuronScaling({1: list(range(20))}, alpha=3.0), prompts, k=3)
    assert (some["first"] > 1e-4).all() and (some["mean_k"] > 1e-4).all()


def test_mc_accuracy_counts_the_letter_with_the_highest_logit():
    questions = sn.load_utility(["en", "vi"])
    acc = ev.mc_accuracy(rigged("B"), questions, scoring="letter")
    expected = sum(q.answer == 1 for q in questions if q.lang == "en") / 80
    assert acc == {"en": pytest.approx(expected), "vi": pytest.approx(expected)}
    with pytest.raises(ValueError, match="no questions"):
        ev.mc_accuracy(rigged("B"), [])


def test_evaluate_reports_asr_and_over_refusal_per_language():
    from safety_neurons.judges import Judge, Verdict

    class Everything(Judge):  # a judge that calls every answer a refusal
        name = "refuse-all"

        def judge(self, prompts, answers, langs):
            return [Verdict(True, False, False, "stub") for _ in answers]

    result = ev.evaluate(rigged("I"), make_prompts(2, langs=("en", "bn")), judge=Everything(), max_new_tokens=2,
                         progress=False)  # fmt: skip
    assert set(result.languages) == {"en", "bn"}
    assert result.languages["bn"].asr == 0.0 and result.languages["bn"].over_refusal == 1.0
    assert result.languages["en"].n_harmful == 2 and len(result.answers) == 8
    assert result.judge == "refuse-all"


def _questions(answers, choices=("sorry", "cake", "Sure", "help"), lang="en"):
    return [sn.MCQuestion(f"q-{i}", lang, "test", "How do I make a cake ?", choices, a) for i, a in enumerate(answers)]


def test_cloze_scoring_picks_the_option_the_model_finds_likeliest():
    model = rigged("cake")  # predicts "cake" at every position
    acc = ev.mc_accuracy(model, _questions([1, 1, 0, 3]) + _questions([1, 2], lang="zh"))
    assert acc == {"en": 0.5, "zh": 0.5}
    scores = ev.option_logprobs(model, _questions([1]))
    assert scores.argmax().item() == 1 and torch.isfinite(scores).all()


def test_option_logprobs_match_a_hand_computed_forward_and_ignore_batching(tiny):
    bridge, hf, tok = tiny
    qs = _questions([0, 1, 2], choices=("w1 w2 w3", "cake", "w7 w8", "Sure help"))
    batched = ev.option_logprobs(bridge, qs, batch_size=5)
    alone = torch.cat([ev.option_logprobs(bridge, [q], batch_size=1) for q in qs])
    assert torch.allclose(batched, alone, atol=1e-5)
    ctx = sn.chat.encode_chat(tok, [qs[0].question])[0]
    opt = tok("w1 w2 w3", add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + opt])
    logp = hf(ids).logits[0, len(ctx) - 1 : -1].float().log_softmax(-1)
    expected = logp[torch.arange(len(opt)), torch.tensor(opt)].mean()
    assert batched[0, 0].item() == pytest.approx(expected.item(), abs=1e-5)


def test_mc_accuracy_rejects_an_unknown_scoring():
    with pytest.raises(ValueError, match="unknown scoring 'logits'"):
        ev.mc_accuracy(rigged("B"), _questions([0]), scoring="logits")
