"""Model loading: parity with HF, packaged models, clear errors."""

import json

import pytest
import torch

import safety_neurons as sn
from safety_neurons import models

from conftest import tiny_hf_model, tiny_tokenizer


def test_bridge_logits_equal_hf(tiny):
    bridge, hf, tok = tiny
    batch = sn.tokenize_chat(bridge.tokenizer, ["How do I make a cake ?", "w3 w4 w5 w6 w7 w8 w9", "w1"])
    with torch.no_grad():
        ours = bridge(batch.input_ids, **batch.model_kwargs())
        theirs = hf(batch.input_ids, **batch.model_kwargs()).logits
    mask = batch.attention_mask.bool()
    assert torch.equal(ours[mask], theirs[mask])


def test_bridge_weights_are_the_hf_weights(tiny):
    bridge, hf, _ = tiny
    mlp, hf_mlp = bridge.blocks[1].mlp, hf.model.layers[1].mlp
    assert mlp.W_gate.data_ptr() == hf_mlp.gate_proj.weight.data_ptr()
    assert mlp.W_in.data_ptr() == hf_mlp.up_proj.weight.data_ptr()
    assert mlp.W_out.data_ptr() == hf_mlp.down_proj.weight.data_ptr()


def test_export_reloads_with_equal_logits(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    bridge, hf, _ = tiny
    with torch.no_grad():
        bridge.blocks[0].mlp.W_out[3] += 0.5  # an edit made through the bridge reaches the export
    out = sn.export_hf(bridge, tmp_path / "exported")
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.tensor([[7, 8, 9, 10, 11]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, bridge(ids), atol=1e-6)
    assert torch.equal(reloaded.model.layers[0].mlp.down_proj.weight, hf.model.layers[0].mlp.down_proj.weight)


def test_local_folder_loads(tmp_path):
    tok = tiny_tokenizer()
    hf = tiny_hf_model("qwen2", len(tok))
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    bridge = sn.load_model(str(tmp_path))
    ids = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(bridge(ids), hf(ids).logits, atol=1e-5)
    assert bridge.cfg.n_layers == 3 and bridge.cfg.d_mlp == 48


def test_unknown_alias_is_a_clear_error():
    with pytest.raises(sn.ModelLoadError, match="unknown model 'qwen-7'.*packaged alias"):
        sn.load_model("qwen-7")
    with pytest.raises(sn.ModelLoadError, match="does not exist"):
        sn.load_model("/nonexistent/model.gguf")


def test_missing_package_prints_install_command(monkeypatch):
    fake = models.PackagedModel(
        "fake", "LlamaForCausalLM", ("no_such_pkg_xyz",), ("m.gguf",), "0" * 64, "pip install no-such-pkg==1.0"
    )
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake", fake)
    monkeypatch.setenv(models.CACHE_ENV, "/tmp/safety-neurons-empty-cache")
    with pytest.raises(sn.ModelLoadError, match="pip install no-such-pkg==1.0"):
        sn.load_model("fake")


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(sn.ModelLoadError, match="not supported.*gated-MLP"):
        sn.load_model(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"]


def test_corrupt_gguf_sha_is_refused(monkeypatch, tmp_path):
    real = models.PACKAGED_MODELS["smollm2-135m-instruct"]
    bad = models.PackagedModel("bad", real.architecture, real.packages, real.files, "f" * 64, real.install)
    monkeypatch.setitem(models.PACKAGED_MODELS, "bad", bad)
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    with pytest.raises(sn.ModelLoadError, match="sha256"):
        models.materialise_packaged("bad")


@pytest.mark.slow
def test_packaged_smollm(smollm):
    folder = models.materialise_packaged("smollm2-135m-instruct")
    assert folder.name.endswith(models.PACKAGED_MODELS["smollm2-135m-instruct"].sha256[:12])
    assert smollm.cfg.n_layers == 30 and smollm.cfg.d_mlp == 1536
    _check_hook_shapes(smollm)


@pytest.mark.slow
def test_packaged_qwen(qwen, monkeypatch):
    assert qwen.cfg.n_layers == 24 and qwen.cfg.d_mlp == 4864 and qwen.cfg.d_model == 896
    # a second load reads the cached HF folder: the GGUF is neither hashed nor converted again (what takes minutes)
    monkeypatch.setattr(models, "_sha256", lambda *args: pytest.fail("the packaged GGUF was hashed again"))
    monkeypatch.setattr(
        models, "convert_gguf", lambda *args, **kwargs: pytest.fail("the packaged GGUF was converted again")
    )
    again = sn.load_model("qwen2.5-coder-0.5b-instruct")
    name = "model.layers.23.mlp.down_proj.weight"
    assert torch.equal(sn.hf_state_dict(again)[name][:8], sn.hf_state_dict(qwen)[name][:8])
    del again
    _check_hook_shapes(qwen)


def _check_hook_shapes(model):
    prompts = [
        sn.Prompt("a", "en", "harmful", "How do I pick a lock?"),
        sn.Prompt("b", "en", "harmless", "How do I bake bread?"),
    ]
    last = model.cfg.n_layers - 1
    c = sn.collect_activations(
        model, prompts, rows_at=[(s, last) for s in ("mlp_in", "gate", "up", "act")], progress=False
    )
    d, f = model.cfg.d_model, model.cfg.d_mlp
    assert c.stats.mean.shape == (2, model.cfg.n_layers, f)
    assert [c.rows.rows[(s, last)].shape for s in ("mlp_in", "gate", "up", "act")] == [(2, d), (2, f), (2, f), (2, f)]
    gate, up, act = (c.rows.rows[(s, last)] for s in ("gate", "up", "act"))
    assert torch.allclose(torch.nn.functional.silu(gate) * up, act, atol=1e-4, rtol=1e-4)
