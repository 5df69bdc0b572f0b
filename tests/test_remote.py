"""The nnsight backend (optional extra): its statistics, rows, Gram matrices and patched logits equal ours."""

import sys
import warnings

import pytest
import torch

import safety_neurons as sn
from safety_neurons import remote as R

from conftest import make_prompts


def test_missing_nnsight_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnsight", None)  # import nnsight now raises ImportError
    with pytest.raises(ImportError, match=r"safety-neurons\[nnsight\]"):
        R.collect_nnsight(object(), make_prompts(1), progress=False)


@pytest.fixture
def pair(tiny):
    nnsight = pytest.importorskip("nnsight")
    bridge, hf, tok = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel's deprecation notice (its successor needs a repo id)
        return bridge, nnsight.LanguageModel(hf, tokenizer=tok)


@pytest.mark.parametrize("position", ["last", "mean"])
def test_nnsight_collection_equals_ours(pair, position):
    bridge, lm = pair
    prompts = make_prompts(3)
    kw = dict(
        rows_at=[("mlp_in", 1), ("act", 1), ("resid", 2)],
        gram_at=[("act", 1)],
        gram_positions="preserved",
        position=position,
        batch_size=4,
        progress=False,
    )
    ours = sn.collect_activations(bridge, prompts, **kw)
    theirs = R.collect_nnsight(lm, prompts, **kw)
    assert theirs.stats.groups == ours.stats.groups and torch.equal(theirs.stats.count, ours.stats.count)
    close = dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(theirs.stats.mean, ours.stats.mean, **close)
    torch.testing.assert_close(theirs.stats.m2, ours.stats.m2, **close)
    for key in ours.rows.rows:
        torch.testing.assert_close(theirs.rows.rows[key], ours.rows.rows[key], **close)
    torch.testing.assert_close(theirs.gram[("act", 1)], ours.gram[("act", 1)], rtol=1e-6, atol=1e-6)
    assert theirs.n_tokens == ours.n_tokens


@pytest.mark.parametrize("site", ["w_out", "gate"])
def test_in_trace_patch_equals_the_applied_edit_and_survives_the_serialisation_dry_run(pair, site):
    bridge, lm = pair
    prompts = make_prompts(3)
    spec = sn.EditSpec.paper(layers=1, neurons={1: list(range(0, 48, 3))}, site=site, langs=["zh"], rank=4)
    edit = sn.fit_edit(bridge, prompts, spec, progress=False)
    assert edit.edits[0].delta.norm() > 0
    texts = [p.text for p in prompts]
    before = sn.evaluation.last_token_logits(bridge, texts, batch_size=4)
    with edit.applied(bridge):
        applied = sn.evaluation.last_token_logits(bridge, texts, batch_size=4)
    patched = R.edited_logits(lm, edit, prompts, batch_size=4, remote="local")  # serialise → deserialise → run
    assert (applied - before).abs().max() > 1e-3  # the edit does something
    torch.testing.assert_close(patched, applied.float(), rtol=1e-4, atol=1e-4)
    # and the collection through the same dry run
    local = R.collect_nnsight(lm, prompts[:6], rows_at=[("act", 1)], batch_size=3, remote="local", progress=False)
    ours = sn.collect_activations(bridge, prompts[:6], rows_at=[("act", 1)], batch_size=3, progress=False)
    torch.testing.assert_close(local.rows.rows[("act", 1)], ours.rows.rows[("act", 1)], rtol=1e-6, atol=1e-7)


def test_remote_without_a_key_is_a_clear_error(pair, monkeypatch):
    import nnsight

    _, lm = pair
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(RuntimeError, match="NDIF_API_KEY"):
        R.collect_nnsight(lm, make_prompts(1), remote=True, progress=False)
    with pytest.raises(ValueError, match="remote must be"):
        R.collect_nnsight(lm, make_prompts(1), remote="yes", progress=False)
