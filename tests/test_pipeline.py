"""The command line and the whole pipeline: its stages and result on a tiny random model (fast), and the
quick sizes on the packaged model (slow)."""

import argparse
import json
from pathlib import Path

import pytest
import torch

import safety_neurons as sn
from safety_neurons import pipeline
from safety_neurons.cli import main
from safety_neurons.evaluation import MEAN_RULE
from safety_neurons.pipeline import STAGES, RunConfig, RunResult
from safety_neurons.selection import SelectionError, choose, select_layers

from conftest import tiny_hf_model, tiny_tokenizer

TINY = dict(
    candidates=[[1], [2]], anchor=3, val=2, test=2, test_harmless=2, mc=1, max_new_tokens=4, select_tokens=4, rank=2
)


@pytest.fixture(scope="module")
def bridge():
    tok = tiny_tokenizer()
    return sn.bridge_from_hf(tiny_hf_model("qwen2", len(tok)), tok, name="tiny-qwen2")


@pytest.fixture(scope="module")
def tiny_run(bridge, tmp_path_factory):
    """One whole run (selection between two layers included) of a tiny model on the bundled prompts."""
    tmp = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFETY_NEURONS_CACHE", str(tmp / "cache"))
        result = pipeline.run(RunConfig(out=str(tmp / "out"), **TINY), model=bridge, quiet=True)
    return result, tmp / "out"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_returns_a_result_with_every_stage_timed(tiny_run):
    result, out = tiny_run
    assert isinstance(result, RunResult)
    assert tuple(result.timings) == STAGES and all(v >= 0 for v in result.timings.values())
    assert [r["label"] for r in result.selection] == ["L1", "L2"]
    assert sum(bool(r.get("chosen")) for r in result.selection) == 1
    assert result.layers == next(r["layers"] for r in result.selection if r.get("chosen")) == result.edit.layers
    assert set(result.before.languages) == set(sn.LANGS) and set(result.kl_first_token) == set(sn.LANGS)
    assert set(result.mc_before) == set(sn.LANGS) and result.site_rows["after"]["harmful"]["bn"].shape == (2, 32)
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    # results.json is written in the report stage, so it has the times of the stages before it
    assert saved["timings_s"] == {k: v for k, v in result.timings.items() if k != "report"}
    assert saved["edited_layers"] == result.layers and saved["edit"]["uid"] == result.edit.uid
    assert saved["mean_non_english_asr"]["after"] == pytest.approx(result.after.mean_asr())
    assert {Path(f).name for f in result.files} == {
        "neurons",
        "edit",
        "results.json",
        "results.md",
        "generations.jsonl",
        "report.html",
    }
    assert sn.WeightEdit.load(out / "edit").uid == result.edit.uid
    assert result.table() in result.text() and "timings (s): load" in result.text()


def test_writing_a_result_twice_gives_identical_files(tiny_run, tmp_path):
    result, _ = tiny_run
    result.write(tmp_path / "a")
    result.write(tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert "report.html" in a and "edit/edit.safetensors" in a and "neurons/neurons.json" in a
    assert a == b


def test_the_report_writer_runs_no_forward_pass(tiny_run, bridge, tmp_path):
    result, _ = tiny_run
    assert not any(v is bridge for v in vars(result).values())  # the result does not even hold the model
    calls = []
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in bridge.modules()]
    try:
        result.write(tmp_path / "again")
        assert calls == []
        sn.evaluation.last_token_logits(bridge, ["w1 w2"])  # the counter does count a forward pass
        assert calls
    finally:
        for h in handles:
            h.remove()


def test_results_md_states_how_the_means_are_taken(tiny_run):
    _, out = tiny_run
    md = (out / "results.md").read_text(encoding="utf-8")
    assert MEAN_RULE in md
    assert "| **mean** (ASR, degenerate: 7 non-English; over-refusal, KL, MC: all 8) |" in md
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["definitions"]["means"] == MEAN_RULE


def _uneven(asr_zh: int) -> sn.Evaluation:
    L = sn.LanguageResult
    return sn.Evaluation(
        "phrase",
        {
            "en": L("en", {"compliance": 3, "refusal": 1}, {"refusal": 1, "compliance": 1}),
            "zh": L("zh", {"compliance": asr_zh, "degenerate": 3, "refusal": 7 - asr_zh}, {"compliance": 5}),
            "bn": L("bn", {"compliance": 2}, {"refusal": 10, "compliance": 10}),
        },
    )


def test_the_table_s_last_row_is_the_mean_of_the_languages_not_the_pooled_share():
    from types import SimpleNamespace

    result = RunResult(
        config=RunConfig(),
        model={},
        judge="phrase",
        ranking=None,
        selection=[],
        layers=[1],
        edit=SimpleNamespace(),
        before=_uneven(1),
        after=_uneven(0),
        kl_first_token={"en": 0.1, "zh": 0.2, "bn": 0.6},
        kl_first_4_tokens={},
        mc_before={"en": 1.0, "zh": 0.5, "bn": 0.0},
        mc_after={"en": 1.0, "zh": 0.5, "bn": 0.3},
    )
    last = result.table().split("\n\n")[0].splitlines()[-1]
    cells = [c.strip() for c in last.strip("|").split("|")]
    assert cells[0] == "**mean** (ASR, degenerate: 2 non-English; over-refusal, KL, MC: all 3)"
    # ASR: zh 1/10, bn 2/2 → (0.1 + 1) / 2 = 55% (pooled 3/12 = 25%); after: zh 0/10 → 50% (pooled 2/12)
    assert cells[1].startswith("55% (pooled 3/12; ") and " → 50% (pooled 2/12; " in cells[1]
    assert cells[2].startswith("15% (pooled 3/12; ")  # degenerate: zh 3/10, bn 0/2
    # over-refusal, every language: en 1/2, zh 0/5, bn 10/20 → 33% (pooled 11/27 = 41%)
    assert cells[3].startswith("33% (pooled 11/27; ")
    assert cells[4] == "0.3000" and cells[5] == "50% → 60%"  # KL and MC accuracy: every language


def test_choose_respects_the_english_cap():
    def rec(label, asr, en, over=0.0):
        return {"label": label, "asr": asr, "over_refusal_delta": over, "kl": 0.1, "en_asr_delta": en}

    records = [rec("jailbreaks en", 0.1, 0.08), rec("safe for en", 0.3, 0.02)]
    assert choose(records, over_refusal_cap=0.05, kl_cap=1.0, en_asr_cap=0.05)["label"] == "safe for en"
    assert choose(records, over_refusal_cap=0.05, kl_cap=1.0, en_asr_cap=0.10)["label"] == "jailbreaks en"
    assert [r.get("chosen", False) for r in records] == [True, False]  # choosing again replaces the choice
    with pytest.raises(SelectionError, match="en_asr_cap must be ≥ 0"):
        choose(records, over_refusal_cap=0.05, kl_cap=1.0, en_asr_cap=-0.1)


def test_the_selection_caps_are_settings_of_the_run(bridge, tmp_path, monkeypatch):
    p = argparse.ArgumentParser()
    RunConfig.add_arguments(p)
    config = RunConfig.from_args(p.parse_args(["--en-asr-cap", "0.2", "--kl-cap", "3", "--over-refusal-cap", "0.1"]))
    assert (config.en_asr_cap, config.kl_cap, config.over_refusal_cap) == (0.2, 3.0, 0.1)
    assert RunConfig().en_asr_cap == 0.05
    with pytest.raises(pipeline.RunConfigError, match="en_asr_cap must be ≥ 0"):
        RunConfig(en_asr_cap=-1).check()
    with pytest.raises(pipeline.RunConfigError, match="cache must be True or False, got 'no'"):
        RunConfig(cache="no").check()  # a non-empty string would otherwise read as True
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return select_layers(*args, **kwargs)

    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline, "select_layers", spy)
    result = pipeline.run(
        RunConfig(**{**TINY, "en_asr_cap": 0.2, "kl_cap": 3.0}), model=bridge, write=False, quiet=True
    )
    assert (seen["en_asr_cap"], seen["kl_cap"], seen["over_refusal_cap"]) == (0.2, 3.0, 0.05)
    assert seen["max_new_tokens"] == TINY["select_tokens"] and result.files == []
    chosen = next(r for r in result.selection if r.get("chosen"))
    redo = choose([dict(r) for r in result.selection], over_refusal_cap=0.05, kl_cap=3.0, en_asr_cap=0.2)
    assert redo["label"] == chosen["label"]


def test_a_run_can_fit_the_harm_switch_instead(bridge, tmp_path, monkeypatch):
    """`--edit switch`: the two-neuron switch at one fixed layer (no selection), saved like any edit."""
    p = argparse.ArgumentParser()
    RunConfig.add_arguments(p)
    args = ["--edit", "switch", "--switch-layer", "1", "--threshold", "0", "--strength", "2"]
    config = RunConfig.from_args(p.parse_args(args + ["--out", str(tmp_path / "out")]))
    assert (config.edit, config.switch_layer, config.threshold, config.strength) == ("switch", 1, 0.0, 2.0)
    assert RunConfig().edit == "linear"
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path / "cache"))
    result = pipeline.run(RunConfig(**{**TINY, **vars(config) | {"quick": False}}), model=bridge, quiet=True)
    edit = result.edit
    assert result.selection == [] and result.layers == [1] and set(edit.layers) == {1}
    assert edit.spec.kind == "switch" and sorted(e.site for e in edit.edits) == ["gate", "up", "w_out"]
    assert all(len(e.neurons) == 2 for e in edit.edits) and edit.settings["strength"] == 2.0
    assert sn.WeightEdit.load(tmp_path / "out" / "edit").uid == edit.uid
    with pytest.raises(pipeline.RunConfigError, match="switch_layer: layers \\[7\\] out of range"):
        pipeline.run(RunConfig(**TINY, edit="switch", switch_layer=7), model=bridge, write=False, quiet=True)
    with pytest.raises(pipeline.RunConfigError, match="unknown edit 'both'; choose one of linear, switch"):
        RunConfig(edit="both").check()
    with pytest.raises(sn.EditError, match="strength"):
        RunConfig(edit="switch", strength=float("nan")).check()


def test_a_second_run_with_other_edit_settings_reuses_the_unedited_side(bridge, tmp_path, monkeypatch):
    """The unedited model's collection, answers and MC accuracy come from the cache, with the numbers a run
    without the cache computes."""
    monkeypatch.setenv("SAFETY_NEURONS_CACHE", str(tmp_path / "cache"))
    config = dict(TINY, layers=[2])
    first = pipeline.run(RunConfig(**config), model=bridge, write=False, quiet=True)
    collected = []
    real_collect = sn.activations.collect_activations
    monkeypatch.setattr(
        sn.activations, "collect_activations", lambda *a, **k: collected.append(1) or real_collect(*a, **k)
    )
    monkeypatch.setattr(pipeline, "collect_activations", lambda *a, **k: collected.append(2) or real_collect(*a, **k))
    monkeypatch.setattr(
        sn.distributed, "collect_activations", lambda *a, **k: collected.append(1) or real_collect(*a, **k)
    )
    second = pipeline.run(RunConfig(**config, refusal_boost=0.5), model=bridge, write=False, quiet=True)
    assert collected == [2, 2]  # only the report's site rows (before and after), not the anchors
    fresh = pipeline.run(RunConfig(**config, refusal_boost=0.5, cache=False), model=bridge, write=False, quiet=True)
    assert collected.count(1) == 1  # --no-cache: the anchors collected again
    for a, b in ((first, second), (second, fresh)):
        assert a.before.to_dict() == b.before.to_dict() and a.mc_before == b.mc_before
    assert second.after.to_dict() == fresh.after.to_dict() and second.edit.settings == fresh.edit.settings
    assert all(torch.equal(x.delta, y.delta) for x, y in zip(second.edit.edits, fresh.edit.edits)), (
        "the cached collection fits the same edit"
    )
    assert first.edit.settings["refusal_boost"] != second.edit.settings["refusal_boost"]


def test_run_checks_what_it_is_given(bridge):
    with pytest.raises(pipeline.RunConfigError, match="prompts must be a PromptSet"):
        pipeline.run(RunConfig(**TINY), model=bridge, prompts=[], write=False)
    with pytest.raises(pipeline.RunConfigError, match="model"):
        pipeline.run(RunConfig(**TINY), model="tiny", write=False)


def test_data_command(capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "2560 prompts" in out and "640 multiple-choice" in out


def test_bad_arguments_give_a_clear_error(capsys):
    assert main(["run", "--model", "no-such-model", "--quick", "--out", "/tmp/sn-none"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_quick_config_shrinks_everything():
    c = RunConfig(quick=True)
    assert (c.anchor, c.test, c.max_new_tokens) == (6, 3, 16) and len(c.candidates) == 1


@pytest.mark.slow
def test_neurons_command(tmp_path, capsys, qwen):
    assert main(["neurons", "--limit", "3", "--layer", "20", "--rank", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Jaccard overlap with English, all layers" in out and "bit-exact: True" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit", "neurons"]  # no 2 GB model unless --export
    assert (tmp_path / "edit" / "edit.safetensors").is_file() and (tmp_path / "neurons" / "neurons.json").is_file()


def test_neurons_command_exports_only_when_asked(tmp_path, monkeypatch, capsys):
    """On a tiny model: the edit and the ranking are saved; the edited model is written only with --export DIR."""
    import safety_neurons as sn

    from conftest import tiny_hf_model, tiny_tokenizer

    tok = tiny_tokenizer()
    bridge = sn.bridge_from_hf(tiny_hf_model("qwen2", len(tok)), tok, name="tiny-qwen2")
    monkeypatch.setattr(sn, "load_model", lambda *args, **kwargs: bridge)
    argv = ["neurons", "--limit", "2", "--layer", "1", "--rank", "2"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["edit", "neurons"]
    assert "exported" not in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "out"), "--export", str(tmp_path / "model")]) == 0
    assert f"exported the edited model to {tmp_path / 'model'}" in capsys.readouterr().out
    assert (tmp_path / "model" / "config.json").is_file() and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "edit",
        "neurons",
    ]
    assert sn.WeightEdit.load(tmp_path / "out" / "edit").is_applied(bridge) is False
    with pytest.raises(SystemExit):  # the old opt-out flag is gone: not exporting is the default
        main([*argv, "--no-export"])


@pytest.mark.slow
def test_quick_run_writes_results_table_and_report(tmp_path, capsys, qwen):
    assert main(["run", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| language | compliance (ASR), harmful | degenerate, harmful | over-refusal, harmless" in out
    assert "Bengali (bn)" in out and "95% Wilson" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["before"]) == {"en", "zh", "vi", "ja", "th", "id", "bn", "he"}
    assert results["config"]["quick"] is True and results["edit"]["uid"]
    for name in ("results.md", "generations.jsonl", "report.html", "edit/edit.json", "neurons/neurons.json"):
        assert (tmp_path / name).is_file(), name
    html = (tmp_path / "report.html").read_text()
    assert html.count("plotly-graph-div") >= 7 and '<script src="http' not in html


def test_choose_prefers_the_lowest_asr_within_the_caps_and_charges_over_refusal_otherwise():
    def rec(label, asr, over, kl=0.1, en=0.0):
        return {"label": label, "asr": asr, "over_refusal_delta": over, "kl": kl, "en_asr_delta": en}

    records = [
        rec("strong", 0.2, 0.30),
        rec("mild", 0.5, 0.03),
        rec("weak", 0.7, 0.0),
        rec("jailbreaks en", 0.1, 0.0, en=0.2),
    ]
    assert choose(records, over_refusal_cap=0.05, kl_cap=1.0, en_asr_cap=0.05)["label"] == "mild"
    assert [r.get("chosen", False) for r in records] == [False, True, False, False]
    records = [rec("strong", 0.2, 0.30), rec("middle", 0.35, 0.10), rec("far", 0.3, 0.5, kl=5.0)]
    best = choose(records, over_refusal_cap=0.05, kl_cap=1.0, en_asr_cap=0.05)
    assert best["label"] == "middle" and "no candidate within the caps" in best["rule"]
