"""Bad input gets a clear error naming the problem before any work is done, never a silently wrong result
(issue 15). One test per class of bad input; each silently-wrong case of the issue fails on the old code."""

import json

import pytest
import torch

import safety_neurons as sn
from safety_neurons import pipeline
from safety_neurons.cli import main

from conftest import make_prompts, tiny_hf_model, tiny_tokenizer

S = [0, 3, 5, 7, 11]


@pytest.fixture(scope="module")
def bridge():
    tok = tiny_tokenizer()
    return sn.bridge_from_hf(tiny_hf_model("qwen2", len(tok)), tok, name="tiny-qwen2")


@pytest.fixture(scope="module")
def prompts():
    return make_prompts(4)


# --- a string where a list is expected ---------------------------------------------------------------------
def test_string_layers_is_an_error_not_layers_1_and_2(bridge, prompts):
    with pytest.raises(sn.EditError, match="layers.*string '12'"):
        sn.EditSpec.paper(layers="12", neurons=S)


def test_generate_refuses_one_string(bridge):
    with pytest.raises(ValueError, match="one string"):
        sn.generate(bridge, "w1 w2", progress=False)


def test_filter_ids_takes_one_id():
    p = sn.load_prompts(["en"])
    one = p[0].id
    assert p.filter(ids=one).ids == [one]


@pytest.mark.parametrize("bad", [{"split": "tset"}, {"split": "Test"}, {"label": "Harmless"}, {"lang": "EN"}])
def test_filter_unknown_vocabulary(bad):
    with pytest.raises(sn.PromptSetError, match=repr(next(iter(bad.values())))):
        sn.load_prompts(["en"]).filter(**bad)


@pytest.mark.parametrize(
    "call",
    [
        lambda b, p: sn.collect_activations(b, p, batch_size=0, progress=False),
        lambda b, p: sn.collect_activations(b, p, position="first", progress=False),
        lambda b, p: sn.collect_activations(b, p, stats_layers="1", progress=False),
        lambda b, p: sn.collect_activations(b, "w1 w2", progress=False),
        lambda b, p: sn.collect_activations(b, [], progress=False),
    ],
)
def test_collect_bad_arguments(bridge, prompts, call):
    with pytest.raises(ValueError, match="batch_size|position|string|strings|empty"):
        call(bridge, prompts)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"gamma": -1}, "gamma"),
        ({"ridge": float("nan")}, "ridge"),
        ({"method": "exact"}, "method"),
        ({"position": "first"}, "position"),
        ({"batch_size": 0}, "batch_size"),
        ({"neurons": "some"}, "neurons"),
        ({"preserve": "harmless"}, "preserve"),
        ({"layers": []}, "layers"),
        ({"langs": ["xx"]}, "unknown language"),
        ({"site": "attn"}, "edit site"),
    ],
)
def test_fit_edit_bad_arguments(bridge, prompts, kwargs, match):
    batch_size = kwargs.pop("batch_size", 16)
    with pytest.raises(sn.EditError, match=match):  # the spec's fields when it is made, the call's before any work
        sn.fit_edit(
            bridge,
            prompts,
            sn.EditSpec.paper(**{"layers": 1, "neurons": S, **kwargs}),
            batch_size=batch_size,
            progress=False,
        )


# --- defaults that fail on valid input ---------------------------------------------------------------------
def test_default_rank_is_capped_for_three_neurons(bridge, prompts):
    edit = sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons=[1, 2, 3]), progress=False)
    assert edit.edits[0].solution["rank"] <= 3 and edit.settings["rank"] == 32


# --- precomputed rows from elsewhere ----------------------------------------------------------------------
def test_rows_from_another_position_are_refused(bridge, prompts):
    rows = sn.collect_activations(
        bridge, prompts, stats_site=None, rows_at=[("mlp_in", 1)], position="mean", progress=False
    ).rows
    with pytest.raises(sn.EditError, match="position='mean'"):
        sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons=S), rows=rows, progress=False)


def test_rows_from_another_model_are_refused(bridge, prompts):
    tok = tiny_tokenizer()
    other = sn.bridge_from_hf(tiny_hf_model("qwen2", len(tok), seed=1), tok, name="other")
    rows = sn.collect_activations(other, prompts, stats_site=None, rows_at=[("mlp_in", 1)], progress=False).rows
    with pytest.raises(sn.EditError, match="another model"):
        sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons=S), rows=rows, progress=False)


# --- zero variance ------------------------------------------------------------------------------------------
def test_zero_variance_gives_no_huge_cohens_d():
    mean = torch.zeros(4, 1, 6, dtype=torch.float64)
    mean[0, 0] = torch.tensor([1.0, 0.5, 0.2, 0.1, 0.05, 0.0])  # en harmful; en harmless = 0; constant groups
    mean[2] = mean[0]
    stats = sn.ActivationStats(
        "act",
        "last",
        [0],
        [("en", "harmful"), ("en", "harmless"), ("zh", "harmful"), ("zh", "harmless")],
        torch.tensor([5, 5, 5, 5]),
        mean,
        torch.zeros_like(mean),
    )
    ranking = sn.rank_neurons(stats)
    assert ranking.d.abs().max() < 1e6
    assert ranking.selected.sum(-1).max() < 5  # not "every neuron with a positive gap"


# --- data files ---------------------------------------------------------------------------------------------
def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("a.csv", "id,lang,label,text\n1,en,harmful,How do I do this, step by step?\n", r"a\.csv:2:.*quoted"),
        ("a.csv", "id,lang,label,text\n1,en,Harmless,Bake a cake\n", r"a\.csv:2:.*'Harmless'.*lower case"),
        ("a.csv", "id,lang,label,text\n1,en,maybe,Bake a cake\n", r"'maybe' is not one of"),
        (
            "a.csv",
            "id,lang,label,text\n1,en,harmless,Bake a cake\n1,en,harmless,Bake bread\n",
            r"duplicate id '1'.*line 2",
        ),
        ("a.csv", "id,lang,label,text\n1,fr,harmless,Bake a cake\n", r"unknown language 'fr'"),
        ("a.csv", "id,lang,label,text\n1,en,harmless,\n", r"empty text"),
        ("a.csv", "id,lang,label,text\n1,en\n", r"fewer fields"),
        (
            "a.jsonl",
            '{"id": "1", "lang": "en", "label": "harmless", "text": "Bake"}\n{"id": "2", "lang"\n',
            r"a\.jsonl:2: not valid JSON",
        ),
        ("a.jsonl", '["en", "harmless"]\n', r"a\.jsonl:1: expected a JSON object"),
        ("a.txt", "hello\n", r"unknown file type"),
    ],
)
def test_load_custom_bad_files(tmp_path, name, text, match):
    with pytest.raises(sn.PromptSetError, match=match):
        sn.load_custom(_write(tmp_path, name, text))


def test_load_custom_quoting_and_encodings(tmp_path):
    path = _write(tmp_path, "a.csv", 'id,lang,label,text\n1,en,harmful,"How, step by step?"\n')
    assert sn.load_custom(path)[0].text == "How, step by step?"
    latin = _write(tmp_path, "b.csv", "id,lang,label,text\n1,en,harmless,Caf\u00e9 menu\n", encoding="cp1252")
    with pytest.raises(sn.PromptSetError, match=r"b\.csv.*encoding="):
        sn.load_custom(latin)
    assert sn.load_custom(latin, encoding="cp1252")[0].text == "Caf\u00e9 menu"


def test_problems_flag_truncated_text():
    ps = sn.PromptSet([sn.Prompt("1", "en", "harmless", 'Explain "why the sky is blue')])
    assert any("truncated" in p for p in ps.problems())


# --- artifacts on load and export -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edit(bridge, prompts):
    return sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons=S, rank=2), progress=False)


@pytest.mark.parametrize("export", ["edit", "hf"])
def test_export_to_an_existing_file_is_an_error(tmp_path, bridge, edit, export):
    target = tmp_path / "model.bin"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="not a folder"):
        edit.export(bridge, target) if export == "edit" else sn.export_hf(bridge, target)
    assert target.read_text() == "keep me" and not edit.is_applied(bridge)


def test_save_leaves_nothing_half_written(tmp_path, edit):
    edit.save(tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


# --- models --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00\x01", b"GGUF" + bytes(range(256)) * 4, b"PK\x03\x04zip"])
def test_corrupt_gguf(tmp_path, monkeypatch, content):
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(sn.ModelLoadError, match="broken.gguf"):
        sn.load_model(str(path))
    cache = tmp_path / "cache"
    assert not cache.exists() or not any((p / "config.json").exists() for p in cache.iterdir())


def test_folder_without_tokenizer(tmp_path):
    tiny_hf_model("llama", 300).config.save_pretrained(tmp_path)
    with pytest.raises(sn.ModelLoadError, match="no tokenizer"):
        sn.load_model(str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"device": "gpu"}, "device 'gpu'"),
        ({"dtype": 3}, "dtype 3"),
        ({"dtype": "int8"}, "dtype 'int8'"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_device_and_dtype(kwargs, match):
    with pytest.raises(sn.ModelLoadError, match=match):
        sn.load_model("smollm2-135m-instruct", **kwargs)


# --- the command line -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, match",
    [
        (["neurons", "--batch-size", "0"], "--batch-size"),
        (["neurons", "--device", "gpu"], "device 'gpu'"),
        (["neurons", "--model", "BROKEN"], "broken.gguf"),
    ],
)
def test_cli_one_line_errors(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00")
    argv = [str(tmp_path / "broken.gguf") if a == "BROKEN" else a for a in argv]
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err


# --- artifacts (the load checks: tests/test_artifacts.py) -------------------------------------------------
def _ranking(bridge, prompts):
    return sn.rank_neurons(sn.collect_activations(bridge, prompts, progress=False).stats)


def _direction(bridge, prompts):
    return sn.RefusalDirection.fit(bridge, prompts, layer=1, langs=["en"], progress=False)


def test_direction_of_another_model_is_refused(bridge, prompts):
    direction = _direction(bridge, prompts)
    direction.direction = torch.ones(7)
    with pytest.raises(sn.BaselineError, match="width 32"), direction.applied(bridge):
        pass


# --- neuron indices and layers must be integers ------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        [1.5, 2.0],
        [1.0, 2.0],
        torch.tensor([1.5, 2.0]),
        torch.tensor([1.0, 3.0]),
        [True, False],
        torch.tensor([True, False]),
        "12",
        [0, 48],
    ],
)
def test_float_or_bool_neuron_indices_are_refused(bridge, prompts, bad):
    with pytest.raises(sn.EditError, match="neurons"):  # when the spec is made, or (out of range) when fitted
        sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons=bad), progress=False)
    with pytest.raises(sn.EditError, match=r"neurons\[1\]"):
        sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons={1: bad}), progress=False)
    with pytest.raises(sn.BaselineError, match="neurons"), sn.NeuronScaling({1: bad}).applied(bridge):
        pass


def test_integer_tensors_and_arrays_are_indices(bridge, prompts):
    import numpy as np

    a = sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons=torch.tensor(S), rank=2), progress=False)
    b = sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons=np.array(S), rank=2), progress=False)
    assert a.edits[0].neurons.tolist() == b.edits[0].neurons.tolist() == S


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda b, p, r: sn.NeuronScaling({1.0: [1]}), sn.BaselineError),
        (lambda b, p, r: sn.NeuronScaling({5: [1]}).applied(b).__enter__(), sn.BaselineError),
        (lambda b, p, r: sn.RefusalDirection.fit(b, p, layer=1.5, progress=False), sn.BaselineError),
        (lambda b, p, r: sn.RefusalDirection.fit(b, p, layer=3, progress=False), sn.BaselineError),
        (lambda b, p, r: sn.rank_by_attribution(b, p, layers=[0.5], progress=False), sn.NeuronsError),
        (lambda b, p, r: sn.rank_by_attribution(b, p, layers=[True], progress=False), sn.NeuronsError),
        (lambda b, p, r: r.neurons("en", 1.0), sn.NeuronsError),
        (lambda b, p, r: r.union(True), sn.NeuronsError),
        (lambda b, p, r: r.jaccard(7), sn.NeuronsError),
    ],
)
def test_float_and_bool_layers_are_refused(bridge, prompts, call, error):
    with pytest.raises(error, match="layer"):
        call(bridge, prompts, _ranking(bridge, prompts))


# --- prompts beyond the model's context window ---------------------------------------------------------------
LONG = sn.Prompt("long-1", "en", "harmful", " ".join(["w1"] * 300))  # the tiny models' window is 256 tokens


@pytest.fixture
def no_forward(bridge):
    """Fails the test if the model runs a forward pass."""

    def hook(*args):
        raise AssertionError("a forward pass ran before the error")

    handle = bridge.original_model.get_input_embeddings().register_forward_pre_hook(hook)
    yield
    handle.remove()


@pytest.mark.parametrize(
    "call",
    [
        lambda b, p: sn.generate(b, p + [LONG], progress=False),
        lambda b, p: sn.evaluate(b, p + [LONG], progress=False),
        lambda b, p: sn.collect_activations(b, p + [LONG], progress=False),
        lambda b, p: sn.refusal_scores(b, p + [LONG]),
        lambda b, p: sn.kl_divergence(b, None, p + [LONG]),
        lambda b, p: sn.rank_by_attribution(b, p + [LONG], progress=False),
        lambda b, p: sn.fit_edit(b, p + [LONG], sn.EditSpec.paper(layers=1, neurons=S), progress=False),
        lambda b, p: sn.mc_accuracy(b, [sn.MCQuestion("long-1", "en", "x", LONG.text, ("A", "B", "C", "D"), 0)]),
    ],
)
def test_prompt_longer_than_the_context_window(bridge, prompts, no_forward, call):
    with pytest.raises(
        sn.PromptTooLongError, match=r"prompt en/long-1( option 0)? is \d+ tokens long.*context window is 256"
    ):
        call(bridge, prompts)


def test_generation_must_fit_the_window_too(bridge, no_forward):
    text = " ".join(["w1"] * 240)  # fits alone, not with 24 new tokens
    with pytest.raises(sn.PromptTooLongError, match=r"prompt #0 .* \+ 24 to generate"):
        sn.generate(bridge, [text], progress=False)


# --- measurements, judges and baselines check their arguments ------------------------------------------------
Q = sn.MCQuestion("q-1", "en", "x", "w1 w2 ?", ("A", "B", "C", "D"), 0)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda b, p: sn.kl_divergence(b, None, p, k=0), sn.EvaluationError, "k must be"),
        (lambda b, p: sn.kl_divergence(b, None, p, k=1.5), sn.EvaluationError, "k must be"),
        (lambda b, p: sn.kl_divergence(b, None, p, batch_size=0), sn.EvaluationError, "batch_size"),
        (lambda b, p: sn.kl_divergence(b, None, []), sn.EvaluationError, "empty"),
        (lambda b, p: sn.kl_divergence(b, None, "w1 w2"), sn.EvaluationError, "the string"),
        (lambda b, p: sn.kl_divergence(b, "edit", p), sn.EvaluationError, "intervention"),
        (lambda b, p: sn.kl_divergence(b, None, ["w1 w2"]), sn.EvaluationError, "Prompt records"),
        (lambda b, p: sn.mc_accuracy(b, []), sn.EvaluationError, "empty"),
        (lambda b, p: sn.mc_accuracy(b, [Q], scoring="letters"), sn.EvaluationError, "scoring 'letters'"),
        (lambda b, p: sn.mc_accuracy(b, [Q], batch_size=0), sn.EvaluationError, "batch_size"),
        (lambda b, p: sn.mc_accuracy(b, p), sn.EvaluationError, "MCQuestion"),
        (
            lambda b, p: sn.mc_accuracy(b, [sn.MCQuestion("q", "en", "x", "w1", ("A", "B"), 3)]),
            sn.EvaluationError,
            "answer 3",
        ),
        (lambda b, p: sn.generate(b, p, batch_size=0), sn.EvaluationError, "batch_size"),
        (lambda b, p: sn.generate(b, [1, 2]), sn.EvaluationError, "int"),
        (lambda b, p: sn.refusal_scores(b, []), sn.EvaluationError, "empty"),
        (lambda b, p: sn.evaluate(b, p, judge="phrases"), sn.EvaluationError, "judge must be"),
        (lambda b, p: sn.NeuronScaling([1, 2]), sn.BaselineError, "neurons must be"),
        (lambda b, p: sn.NeuronScaling({}), sn.BaselineError, "neurons must be"),
        (lambda b, p: sn.NeuronScaling({1: [1]}, alpha="2"), sn.BaselineError, "alpha"),
        (lambda b, p: sn.NeuronScaling({1: [48]}).applied(b).__enter__(), sn.BaselineError, "out of range"),
        (lambda b, p: sn.RefusalDirection.fit(b, p, layer=1, langs="en", progress=False), sn.BaselineError, "langs"),
        (
            lambda b, p: sn.RefusalDirection.fit(b, p, layer=1, langs=["xx"], progress=False),
            ValueError,
            "unknown language",
        ),
        (
            lambda b, p: sn.RefusalDirection.fit(b, [x for x in p if x.label == "harmful"], layer=1, progress=False),
            sn.BaselineError,
            "en harmless",
        ),
        (
            lambda b, p: sn.RefusalDirection.fit(b, p, layer=1, langs=["en", "th"], progress=False),
            sn.BaselineError,
            "th harmful",
        ),
        (
            lambda b, p: sn.RefusalDirection.fit(b, p, layer=1, batch_size=0, progress=False),
            sn.BaselineError,
            "batch_size",
        ),
        (lambda b, p: sn.NeuronScaling.from_ranking("ranking"), sn.BaselineError, "ranking must be"),
    ],
)
def test_measurement_and_baseline_arguments(bridge, prompts, call, error, match):
    with pytest.raises(error, match=match):
        call(bridge, prompts)


@pytest.mark.parametrize(
    "args, match",
    [
        ((["p1", "p2"], ["a1"], ["en", "en"]), "same length"),
        ((["p1"], ["a1"], ["en", "zh"]), "same length"),
        ((["p1"], ["a1"], ["xx"]), "unknown language code 'xx'"),
        ((["p1"], ["a1"], [None]), "unknown language code None"),
        (("p1", ["a1"], ["en"]), "prompts must be a sequence"),
        ((["p1"], None, ["en"]), "answers must be a list"),
        ((["p1"], [3], ["en"]), "answer is int"),
    ],
)
def test_judge_arguments(args, match):
    with pytest.raises(sn.JudgeError, match=match):
        sn.PhraseJudge().judge(*args)
    with pytest.raises(TypeError if "must be" in match else ValueError):  # still what it was before
        sn.PhraseJudge().judge(*args)


def test_judge_references_must_match_the_answers():
    from safety_neurons.judges import _check_references

    with pytest.raises(sn.JudgeError, match="2 references for 1 answers"):
        _check_references(["r1", "r2"], ["a1"])


# --- the run's whole configuration is checked before any work; its folder is all or nothing -----------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": [5]}, r"layers: layers \[5\] out of range: .* 3 layers"),
        ({}, r"candidates .*layers \[19, 21\] out of range"),
        ({"layers": [1.5]}, "integer"),
        ({"layers": "12"}, "string '12'"),
        ({"candidates": []}, "candidates is empty"),
        ({"langs": ["xx"]}, "unknown language"),
        ({"langs": ["en"]}, "pivot"),
        ({"site": "attn"}, "unknown site 'attn'"),
        ({"target": "gap"}, "unknown target 'gap'"),
        ({"neurons": "zh"}, "unknown neurons 'zh'"),
        ({"preserve": "harmless"}, "preserve must be a list"),
        ({"preserve": ["safe"]}, "unknown preserve option 'safe'"),
        ({"mc_scoring": "Cloze"}, "did you mean 'cloze'"),
        ({"anchor": 0}, "anchor must be"),
        ({"rank": 2.0}, "rank must be an integer"),
        ({"kl_cap": 0}, "kl_cap must be > 0"),
        ({"gamma": float("nan")}, "gamma must be finite"),
        ({"site": "gate", "target": "language_gap"}, "needs site='w_out'"),
        ({"max_new_tokens": 250, "layers": [1]}, r"prompt .* \+ 250 to generate.*256"),
    ],
)
def test_run_config_is_checked_against_the_model(bridge, kwargs, match):
    config = pipeline.RunConfig(**kwargs)
    splits = (
        pipeline._splits(config, sn.load_prompts()) if isinstance(config.anchor, int) and config.anchor > 0 else None
    )
    with pytest.raises(ValueError, match=match):
        config.check(bridge, splits)


def test_run_config_langs_must_be_in_the_prompt_set(bridge):
    config = pipeline.RunConfig(layers=[1], langs=["th"])
    splits = pipeline._splits(config, sn.load_prompts(["en", "zh"]))
    with pytest.raises(pipeline.RunConfigError, match=r"no anchor prompts in \['th'\]"):
        config.check(bridge, splits)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--layers", "5"], "layers [5] out of range"),
        (["--quick"], "candidates"),
        (["--layers", "1", "--max-new-tokens", "300"], "+ 300 to generate"),
    ],
)
def test_cli_run_checks_the_config_against_the_model_in_one_line(tmp_path, monkeypatch, capsys, bridge, argv, match):
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: bridge)
    monkeypatch.setattr(pipeline, "collect_sharded", lambda *a, **k: pytest.fail("work started"), raising=False)
    monkeypatch.setattr(pipeline.distributed, "collect_sharded", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "out"
    assert main(["run", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and match in err
    assert not out.exists()


def test_a_failed_run_leaves_no_half_written_results_folder(tmp_path, monkeypatch, bridge):
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: bridge)
    config = {
        "layers": [1],
        "anchor": 3,
        "val": 1,
        "test": 1,
        "test_harmless": 1,
        "mc": 1,
        "max_new_tokens": 4,
        "rank": 2,
    }

    def broken_report(*args):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "_write_report", broken_report)
    with pytest.raises(OSError, match="disk full"):
        pipeline.run(pipeline.RunConfig(out=str(tmp_path / "new"), **config))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no folder, no temporary left over

    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text('{"previous": true}')
    with pytest.raises(OSError, match="disk full"):
        pipeline.run(pipeline.RunConfig(out=str(old), **config))
    assert sorted(p.name for p in old.iterdir()) == ["results.json"]
    assert json.loads((old / "results.json").read_text()) == {"previous": True}

    monkeypatch.setattr(pipeline, "_write_report", lambda *args: None)
    result = pipeline.run(pipeline.RunConfig(out=str(tmp_path / "new"), **config))
    names = {p.name for p in (tmp_path / "new").iterdir()}
    assert {"results.json", "results.md", "generations.jsonl", "edit", "neurons"} <= names
    assert result.layers == [1] and sn.WeightEdit.load(tmp_path / "new" / "edit").uid == result.edit.uid


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--batch-size", "0"], "batch_size must be an integer ≥ 1, got 0"),
        (["--kl-cap", "-1"], "kl_cap must be > 0"),
        (["--out", "FILE"], "exists and is not a folder"),
    ],
)
def test_cli_run_checks_settings_before_loading_the_model(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "file").write_text("x")
    argv = [str(tmp_path / "file") if a == "FILE" else a for a in argv]
    assert main(["run", *argv] + ([] if "--out" in argv else ["--out", str(tmp_path / "out")])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_cli_prints_a_multi_line_message_on_one_line(monkeypatch, capsys):
    from safety_neurons import cli

    def fail(args):
        raise FileNotFoundError("first line\nsecond line")

    monkeypatch.setattr(cli, "_data", fail)
    assert main(["data"]) == 2
    assert capsys.readouterr().err.strip() == "safety-neurons: error: first line second line"


def test_evaluation_langs_take_one_code(bridge, prompts):
    ev = sn.evaluate(bridge, prompts, max_new_tokens=2, progress=False)
    assert ev.mean_asr("en") == ev.mean_asr(["en"])  # not the languages 'e' and 'n'
    with pytest.raises(sn.EvaluationError, match="no results for"):
        ev.mean_asr(["th"])


def test_overlap_with_another_layer_set_is_an_error(bridge, prompts):
    ranking = _ranking(bridge, prompts)
    other = sn.SafetyNeurons(
        ranking.langs, [0], ranking.delta[:, :1], ranking.z[:, :1], ranking.d[:, :1], ranking.selected[:, :1]
    )
    with pytest.raises(sn.NeuronsError, match=r"no layers \[1, 2\]"):
        ranking.overlap_with(other)
