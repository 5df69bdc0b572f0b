"""A model loaded through an explicit per-layer `device_map` (every entry "cpu" on this machine): the same
numbers as a plainly loaded one, and the whole pipeline end to end (collection, selection-free fit, apply,
evaluation, report, export)."""

import json

import pytest
import torch

import safety_neurons as sn

from conftest import make_prompts, tiny_hf_model, tiny_tokenizer


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch):
    """The tiny Qwen2 model saved as an HF folder. Its word-level tokenizer does not survive a reload next to
    a qwen2 config.json (AutoTokenizer then builds a Qwen2Tokenizer), so loading hands back the original."""
    import transformers

    tok = tiny_tokenizer()
    folder = tmp_path / "tiny-qwen2"
    tiny_hf_model("qwen2", len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    return str(folder)


def per_layer_map(n_layers: int) -> dict[str, str]:
    return {
        "model.embed_tokens": "cpu",
        **{f"model.layers.{i}": "cpu" for i in range(n_layers)},
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }


def test_device_map_model_collects_and_edits_like_the_plain_one(tiny_folder, tmp_path):
    plain = sn.load_model(tiny_folder)
    mapped = sn.load_model(tiny_folder, device_map=per_layer_map(3))
    assert sn.models.layer_devices(mapped) == {i: torch.device("cpu") for i in range(3)}
    prompts = make_prompts(4)
    kw = dict(rows_at=[("act", 1)], gram_at=[("act", 1)], batch_size=4, progress=False)
    a, b = sn.collect_activations(plain, prompts, **kw), sn.collect_activations(mapped, prompts, **kw)
    assert torch.equal(a.stats.mean, b.stats.mean) and torch.equal(a.rows.rows[("act", 1)], b.rows.rows[("act", 1)])
    assert torch.equal(a.gram[("act", 1)], b.gram[("act", 1)])
    spec = sn.EditSpec.paper(layers=1, neurons="all", site="w_out", langs=["zh"], rank=4, sequential=False)
    edit = sn.fit_edit(mapped, prompts, spec, rows=b, progress=False)
    assert edit.edits[0].delta.norm() > 0
    before = {k: v.clone() for k, v in sn.hf_state_dict(mapped).items()}
    with edit.applied(mapped):
        changed = [k for k, v in sn.hf_state_dict(mapped).items() if not torch.equal(v, before[k])]
        assert changed == ["model.layers.1.mlp.down_proj.weight"]
    assert all(torch.equal(v, before[k]) for k, v in sn.hf_state_dict(mapped).items())
    out = edit.export(mapped, tmp_path / "edited")
    assert (out / "config.json").is_file()


def test_pipeline_end_to_end_through_a_per_layer_device_map(tiny_folder, tmp_path):
    config = sn.RunConfig(
        model=tiny_folder,
        device_map=per_layer_map(3),
        quick=True,
        layers=[1],
        rank=4,
        mc_scoring="letter",
        out=str(tmp_path / "run"),
    )
    result = sn.run(config)
    out = tmp_path / "run"
    for name in ("results.json", "results.md", "generations.jsonl", "edit/edit.json", "neurons"):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["device_map"] == per_layer_map(3) and saved["processes"] == 1
    assert result.layers == [1] and set(result.after.languages) == set(sn.LANGS)


def test_device_and_device_map_together_is_a_clear_error(tiny_folder):
    with pytest.raises(sn.ModelLoadError, match="either device"):
        sn.load_model(tiny_folder, device="cpu", device_map="auto")
    with pytest.raises(sn.ModelLoadError, match="n_devices"):
        sn.load_model(tiny_folder, n_devices=0)
