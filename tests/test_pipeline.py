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
    assert main(["neurons", "--limit", "3", "--layer", "20", "--rank", "4", "--no-export", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Jaccard overlap with English, all layers" in out and "bit-exact: True" in out
    assert (tmp_path / "edit" / "edit.safetensors").is_file() and (tmp_path / "neurons" / "neurons.json").is_file()


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
