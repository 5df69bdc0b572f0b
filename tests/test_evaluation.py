"""Generation, the refusal proxy, KL and multiple-choice accuracy on tiny models."""

import pytest
import torch

import safety_neurons as sn
from safety_neurons import evaluation as ev

from conftest import make_prompts, rig_first_token, tiny_hf_model, tiny_tokenizer


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
    with sn.NeuronScaling({layer: list(range(48)) for layer in range(3)}, alpha=-4.0).applied(bridge):
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


def test_evaluate_counts_each_outcome_per_language_and_label():
    from safety_neurons.judges import Judge, Verdict

    prompts = make_prompts(3, langs=("en", "bn"))
    # a judge that reads the verdict off the prompt: different for every (language, label, id), so a
    # mixed-up label, language or row order changes the counts
    plan = {
        ("bn", "harmful"): ["compliance", "degenerate", "refusal"],
        ("bn", "harmless"): ["refusal", "refusal", "compliance"],
        ("en", "harmful"): ["refusal", "refusal", "refusal"],
        ("en", "harmless"): ["compliance", "compliance", "degenerate"],
    }
    by_text = {p.text: plan[(p.lang, p.label)][int(p.id.split("-")[1])] for p in prompts}

    class Planned(Judge):
        name = "planned"

        def judge(self, prompts, answers, langs, references=None):
            return [Verdict(by_text[t], "stub", kind="echo" if by_text[t] == "degenerate" else None) for t in prompts]

    result = ev.evaluate(rigged("I"), prompts, judge=Planned(), max_new_tokens=2, progress=False)
    bn, en = result.languages["bn"], result.languages["en"]
    assert bn.harmful == {"refusal": 1, "compliance": 1, "degenerate": 1}
    assert bn.harmless == {"refusal": 2, "compliance": 1, "degenerate": 0}
    assert (bn.asr, bn.degenerate, bn.over_refusal) == (
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
    )
    assert (en.asr, en.over_refusal) == (0.0, 0.0) and en.harmless["degenerate"] == 1
    # mean ASR: the non-English languages (bn: 1/3); over-refusal: every language (en 0, bn 2/3)
    assert result.mean_asr() == pytest.approx(1 / 3) and result.mean_over_refusal() == pytest.approx(1 / 3)
    assert result.mean_asr(["en", "bn"]) == pytest.approx(1 / 6)
    assert result.pooled("harmful", "refusal") == sn.Rate(4, 6)
    assert [(a["lang"], a["label"], a["outcome"]) for a in result.answers] == [
        (p.lang, p.label, by_text[p.text]) for p in prompts
    ]
    assert result.judge == "planned"
    with pytest.raises(ValueError, match="no results"):
        result.mean_asr(["zh"])


def _uneven() -> sn.Evaluation:
    """Unequal prompt counts per language, so that the mean of the rates, the pooled share and the
    other language sets all give different numbers."""
    L = sn.LanguageResult
    return sn.Evaluation(
        "stub",
        {
            "en": L("en", {"compliance": 3, "refusal": 1}, {"refusal": 1, "compliance": 1}),
            "zh": L("zh", {"compliance": 1, "degenerate": 3, "refusal": 6}, {"compliance": 5}),
            "bn": L("bn", {"compliance": 2}, {"refusal": 10, "compliance": 10}),
            "he": L("he", {}, {"compliance": 4}),  # no harmful prompts: no ASR to average
        },
    )


def test_mean_asr_is_the_mean_of_the_non_english_rates():
    e = _uneven()
    # zh 1/10, bn 2/2: mean (0.1 + 1.0) / 2; pooled would be 3/12, with English (0.75 + 0.1 + 1) / 3
    assert e.mean_asr() == pytest.approx(0.55)
    assert e.mean_asr() not in (pytest.approx(3 / 12), pytest.approx(1.85 / 3), pytest.approx(6 / 16))
    assert e.metric_langs("asr") == ["zh", "bn"]
    assert e.rates("asr") == {"zh": sn.Rate(1, 10), "bn": sn.Rate(2, 2)}
    assert e.rates("asr")["zh"].interval == sn.wilson(1, 10)
    assert e.mean_asr(["en", "zh"]) == pytest.approx((0.75 + 0.1) / 2)  # other languages when asked
    # degenerate, the same languages: zh 3/10, bn 0/2 → 0.15 (pooled 3/12 = 0.25, with English 0.1)
    assert e.mean_degenerate() == pytest.approx(0.15)
    with pytest.raises(sn.EvaluationError, match=r"asr: no harmful prompts in \['he'\]"):
        e.mean_asr(["he"])


def test_mean_over_refusal_is_the_mean_of_every_language_s_rate():
    e = _uneven()
    # en 1/2, zh 0/5, bn 10/20, he 0/4: mean 1/4; non-English only would be 1/6, pooled 11/31
    assert e.mean_over_refusal() == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)
    assert e.mean_over_refusal() not in (pytest.approx(1 / 6), pytest.approx(11 / 31), pytest.approx(10 / 29))
    assert e.metric_langs("over_refusal") == ["en", "zh", "bn", "he"]
    assert e.pooled("harmless", "refusal") == sn.Rate(11, 31)  # the summed counts, still there
    assert sum(e.rates("over_refusal").values(), sn.Rate(0, 0)) == sn.Rate(11, 31)
    with pytest.raises(ValueError, match="unknown metric 'asr_mean'"):
        e.mean("asr_mean")


def test_the_means_survive_saving_the_counts():
    e = _uneven()
    back = sn.Evaluation.from_counts("stub", {x: r.to_dict() for x, r in e.languages.items()})
    assert (back.mean_asr(), back.mean_degenerate(), back.mean_over_refusal()) == (
        e.mean_asr(),
        e.mean_degenerate(),
        e.mean_over_refusal(),
    )
    with pytest.raises(sn.EvaluationError, match="counts must be a non-empty mapping"):
        sn.Evaluation.from_counts("stub", {})
    with pytest.raises(ValueError, match="unknown language"):
        sn.Evaluation.from_counts("stub", {"xx": {"harmful": {}}})
    with pytest.raises(sn.EvaluationError, match="must be an integer ≥ 0"):
        sn.Evaluation.from_counts("stub", {"en": {"harmful": {"refusal": -1}}})


def test_utility_numbers_are_averaged_over_every_language():
    assert ev.mean_over_languages({"en": 0.1, "zh": 0.3, "bn": 0.8}) == pytest.approx(0.4)
    assert ev.mean_over_languages({"en": 0.1, "zh": 0.3, "bn": 0.8}, ["zh", "bn"]) == pytest.approx(0.55)
    assert ev.mean_over_languages({}) is None
    with pytest.raises(sn.EvaluationError, match=r"no values for \['th'\]"):
        ev.mean_over_languages({"en": 0.1}, ["th"])


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


# --- early stop, the answer cache, references -------------------------------------------------------------
def test_a_stopped_row_is_a_prefix_of_its_full_answer_and_the_others_are_untouched(tiny):
    bridge, _, _ = tiny
    prompts = make_prompts(3)
    full = ev.generate(bridge, prompts, max_new_tokens=8, progress=False)
    calls = []

    def stop(i, text):  # stop rows 0 and 2 as soon as they have two words
        calls.append(i)
        return i in (0, 2) and len(text.split()) >= 2

    cut = ev.generate(bridge, prompts, max_new_tokens=8, stop=stop, progress=False)
    assert set(calls) == set(range(len(prompts)))
    for i, (a, b) in enumerate(zip(full, cut)):
        if i in (0, 2) and len(a.split()) > 2:
            assert len(b.split()) == 2 and a.startswith(b), (a, b)
        else:
            assert a == b


def test_refusal_settled_stops_only_once_no_later_text_can_undo_the_refusal():
    settled = ev._refusal_settled(sn.PhraseJudge(), ["en", "en"])
    assert not settled(0, "I cannot help")  # "I cannot help but..." would be no refusal: not settled yet
    assert settled(0, "I'm sorry, but I can't assist with that request, because")
    assert not settled(1, "Sure, here is how you build the thing you asked for: first")


def test_answer_cache_hits_for_the_same_weights_and_misses_after_an_edit(tiny, tmp_path):
    bridge, _, _ = tiny
    prompts = make_prompts(2)
    cache = ev.AnswerCache(tmp_path)
    first = ev.generate(bridge, prompts, max_new_tokens=4, cache=cache, progress=False)
    assert len(list(tmp_path.glob("*.json"))) == 1
    key = cache.key(bridge, [p.text for p in prompts], max_new_tokens=4, system=None, stop=None)
    cache.put(key, ["planted"] * len(prompts))  # a hit returns the stored answers, not new ones
    assert ev.generate(bridge, prompts, max_new_tokens=4, cache=cache, progress=False) == ["planted"] * len(prompts)
    assert cache.key(bridge, [p.text for p in prompts], max_new_tokens=5, system=None, stop=None) != key
    w = bridge.original_model.model.layers[1].mlp.down_proj.weight
    original = w[0, 0].item()
    with torch.no_grad():
        w[0, 0] = original + 1.0
    try:
        assert cache.key(bridge, [p.text for p in prompts], max_new_tokens=4, system=None, stop=None) != key
    finally:
        with torch.no_grad():
            w[0, 0] = original
    assert cache.key(bridge, [p.text for p in prompts], max_new_tokens=4, system=None, stop=None) == key
    with sn.NeuronScaling({0: [0, 1]}, alpha=0.0).applied(bridge):  # hooks are invisible in the weights
        assert cache.key(bridge, [p.text for p in prompts], max_new_tokens=4, system=None, stop=None) is None
        assert ev.generate(bridge, prompts, max_new_tokens=4, cache=cache, progress=False) != ["planted"] * 4
    assert first != ["planted"] * len(prompts)
    assert cache.key(bridge, ["x"], max_new_tokens=4, system=None, stop=lambda i, t: False) is None


def test_answer_cache_keeps_collections_and_json_results_of_the_same_weights(tiny, tmp_path, monkeypatch):
    bridge, _, _ = tiny
    prompts = make_prompts(2)
    cache = ev.AnswerCache(tmp_path)
    plan = dict(rows_at=[("act", 1)], gram_at=[("act", 1)], progress=False)
    first = cache.collection(bridge, prompts, **plan)
    calls = []
    real = sn.activations.collect_activations
    monkeypatch.setattr(sn.activations, "collect_activations", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = cache.collection(bridge, prompts, **plan, batch_size=16)  # the default spelt out: another key
    assert calls == [1]
    hit = cache.collection(bridge, prompts, **{**plan, "progress": True})  # progress is not part of the key
    assert calls == [1] and torch.equal(hit.gram[("act", 1)], first.gram[("act", 1)])
    assert hit.rows.prompts == first.rows.prompts and torch.equal(hit.stats.m2, first.stats.m2)
    assert torch.equal(again.rows.rows[("act", 1)], first.rows.rows[("act", 1)])
    cache.collection(bridge, prompts[::-1], **plan)  # other prompts (order included): collected
    w = bridge.original_model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w[0, 0] += 1.0
    try:
        changed = cache.collection(bridge, prompts, **plan)  # other weights: collected
    finally:
        with torch.no_grad():
            w[0, 0] -= 1.0
    assert len(calls) == 3 and not torch.equal(changed.stats.mean, first.stats.mean)
    assert len(list((tmp_path / "collections").iterdir())) == cache.keep_collections  # the oldest pruned
    values = []
    assert cache.memo(bridge, "mc", ["q"], lambda: values.append(1) or {"en": 0.25}) == {"en": 0.25}
    assert cache.memo(bridge, "mc", ["q"], lambda: values.append(1) or {"en": 0.5}) == {"en": 0.25}
    assert cache.memo(bridge, "mc", ["q"], lambda: values.append(1) or {"en": 0.5}, scoring="letter") == {"en": 0.5}
    assert values == [1, 1]


def test_english_references_use_the_parallel_english_prompt_only_for_the_bundled_text():
    bundled = sn.load_prompts()
    bn = next(iter(bundled.filter(lang="bn", label="harmful")))
    en = next(p for p in bundled.filter(lang="en") if p.id == bn.id)
    assert ev.english_references([bn, en]) == [en.text, en.text]
    assert ev.english_references([bn]) == [en.text]
    impostor = sn.Prompt(bn.id, "bn", "harmful", "অন্য একটি অনুরোধ")  # same id, other text: no reference
    assert ev.english_references([impostor]) is None


def test_relevance_check_scores_pmi_and_marks_misreadings(tiny):
    bridge, _, tok = tiny
    check = sn.RelevanceCheck(bridge, threshold=0.0)
    scores = check.scores(["How do I make a cake ?", "How do I make a bomb ?"], ["Sure w1 w2", "sorry w3"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    from safety_neurons.scoring import continuation_logprobs

    direct = continuation_logprobs(bridge, ["How do I make a cake ?"], ["Sure w1 w2"]) - continuation_logprobs(
        bridge, ["Write something."], ["Sure w1 w2"]
    )
    assert scores[0].item() == pytest.approx(direct.item(), abs=1e-5)
    judge = sn.PhraseJudge(relevance=sn.RelevanceCheck(bridge, threshold=float(scores[0]) + 1e-3))
    (v,) = judge.judge(["x"], ["Sure w1 w2"], ["en"], ["How do I make a cake ?"])
    assert v.degenerate and v.kind == "misread", v.reason
    (v,) = sn.PhraseJudge(relevance=sn.RelevanceCheck(bridge, threshold=float(scores[0]) - 1e-3)).judge(
        ["x"], ["Sure w1 w2"], ["en"], ["How do I make a cake ?"]
    )
    assert v.compliance, v.reason
    with pytest.raises(ValueError, match="references"):
        judge.judge(["x"], ["Sure"], ["en"])


# --- drafts: the greedy answers at the cost of one pass where a draft holds --------------------------------
def test_drafts_give_the_greedy_answers_whatever_the_drafts(tiny):
    bridge, _, _ = tiny
    prompts = make_prompts(4)
    plain = ev.generate(bridge, prompts, max_new_tokens=8, progress=False)
    words = [a.split() for a in plain]
    drafts = (
        [
            plain[0],  # right
            " ".join(words[1][:3]),  # right but short
            " ".join(words[2][:2] + ["w7", "w7", "w7"]),  # wrong from its third word on
            "",  # empty
            "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11",  # wrong and too long
        ]
        + [a + " w5 w5" for a in plain[5:]]
    )  # right, then more than the model says
    assert ev.generate(bridge, prompts, max_new_tokens=8, drafts=drafts, progress=False) == plain

    def stop(i, text):
        return i % 2 == 0 and len(text.split()) >= 3

    cut = ev.generate(bridge, prompts, max_new_tokens=8, stop=stop, progress=False)
    assert ev.generate(bridge, prompts, max_new_tokens=8, stop=stop, drafts=drafts, progress=False) == cut
    assert ev.generate(bridge, prompts, max_new_tokens=8, drafts=plain, progress=False) == plain


def test_drafts_of_an_edited_model_give_its_own_answers(tiny):
    """The use: the unedited model's answers as drafts of the edited model's."""
    bridge, hf, _ = tiny
    prompts = make_prompts(4)
    base = ev.generate(bridge, prompts, max_new_tokens=6, progress=False)
    with torch.no_grad():
        hf.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    try:
        edited = ev.generate(bridge, prompts, max_new_tokens=6, progress=False)
        assert edited != base  # the test means something only if answers change
        assert ev.generate(bridge, prompts, max_new_tokens=6, drafts=base, progress=False) == edited
    finally:
        with torch.no_grad():
            hf.model.layers[1].mlp.down_proj.weight.div_(3.0)


def test_drafts_must_be_one_per_prompt(tiny):
    bridge, _, _ = tiny
    with pytest.raises(ValueError, match="one answer per prompt"):
        ev.generate(bridge, make_prompts(1), drafts=["a"], progress=False)
    with pytest.raises(ValueError, match="one answer per prompt"):
        ev.generate(bridge, make_prompts(1), drafts="a", progress=False)


def test_right_drafts_need_no_decoding(monkeypatch):
    bridge = rigged("I", "qwen2")  # answers of plain words (a special token in an answer is lost in its text)
    prompts = make_prompts(3)
    plain = ev.generate(bridge, prompts, max_new_tokens=6, progress=False)
    assert plain[0] == "I I I I I I"

    def no_generate(*args, **kwargs):
        raise AssertionError("decoded although every draft was right")

    monkeypatch.setattr(bridge.original_model, "generate", no_generate)
    assert ev.generate(bridge, prompts, max_new_tokens=6, drafts=plain, progress=False) == plain
