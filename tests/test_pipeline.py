"""The command line and the whole pipeline (quick sizes) on the packaged model."""

import json

import pytest

from safety_neurons.cli import main
from safety_neurons.pipeline import RunConfig


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
        "edit", "neurons"]  # fmt: skip
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
    assert html.count("plotly-graph-div") >= 7 and "<script src=\"http" not in html


def test_choose_prefers_the_lowest_asr_within_the_caps_and_charges_over_refusal_otherwise():
    from safety_neurons.pipeline import choose

    def rec(label, asr, over, kl=0.1, en=0.0):
        return {"label": label, "asr": asr, "over_refusal_delta": over, "kl": kl, "en_asr_delta": en}

    records = [rec("strong", 0.2, 0.30), rec("mild", 0.5, 0.03), rec("weak", 0.7, 0.0), rec("jailbreaks en", 0.1, 0.0, en=0.2)]
    assert choose(records, over_refusal_cap=0.05, kl_cap=1.0)["label"] == "mild"
    assert [r.get("chosen", False) for r in records] == [False, True, False, False]
    records = [rec("strong", 0.2, 0.30), rec("middle", 0.35, 0.10), rec("far", 0.3, 0.5, kl=5.0)]
    best = choose(records, over_refusal_cap=0.05, kl_cap=1.0)
    assert best["label"] == "middle" and "no candidate within the caps" in best["rule"]
