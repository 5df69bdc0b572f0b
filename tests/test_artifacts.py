"""One artifact format for every saved object (`_checks.write_artifact` / `read_artifact`): each kind saved and
loaded back is the same object, and a wrong kind, a newer format, a changed tensor or field, a damaged file and
a missing field are each an error of the class's own type naming the file. Folders written before format 2 load."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import safety_neurons as sn
from safety_neurons._checks import ARTIFACTS, FORMAT_VERSION

from conftest import make_prompts, tiny_hf_model, tiny_tokenizer

DATA = __import__("pathlib").Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def made():
    """One object of every kind, fitted on a tiny model."""
    tok = tiny_tokenizer()
    bridge = sn.bridge_from_hf(tiny_hf_model("qwen2", len(tok)), tok, name="tiny-qwen2")
    prompts = make_prompts(4)
    stats = sn.collect_activations(bridge, prompts, progress=False).stats
    ranking = sn.rank_neurons(stats)
    return {
        # the w_out edit of the neurons' own activations carries a neuron map too
        "WeightEdit": sn.fit_edit(
            bridge,
            prompts,
            sn.EditSpec.paper(layers=[0, 1], neurons=[0, 3, 5, 7], site="w_out", rank=2),
            progress=False,
        ),
        "SafetyNeurons": ranking,
        "ActivationStats": stats,
        "RefusalDirection": sn.RefusalDirection.fit(bridge, prompts, layer=1, langs=["en"], coeff=0.5, progress=False),
        "NeuronScaling": sn.NeuronScaling({2: [5, 1], 0: [7]}, alpha=-1.5),
        "HarmDetector": sn.fit_detector(bridge, prompts, layer=1, answer_tokens=0, progress=False),
        "Evaluation": sn.evaluate(bridge, prompts, max_new_tokens=2, progress=False),
        "Collection": sn.collect_activations(
            bridge, prompts, rows_at=[("act", 1), ("resid", 0)], gram_at=[("act", 1)], progress=False
        ),
    }


CLASSES = {kind: getattr(sn, kind) for kind in ARTIFACTS}
ERRORS = {
    "WeightEdit": sn.EditError,
    "SafetyNeurons": sn.NeuronsError,
    "ActivationStats": sn.ActivationError,
    "RefusalDirection": sn.BaselineError,
    "NeuronScaling": sn.BaselineError,
    "HarmDetector": sn.SwitchError,
    "Evaluation": sn.EvaluationError,
    "Collection": sn.ActivationError,
}
KINDS = list(ARTIFACTS)


def same(a, b) -> bool:
    """Equal field by field: tensors bit for bit and of the same dtype, tuples and lists alike."""
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def paths(folder, kind):
    stem = ARTIFACTS[kind]
    return folder / f"{stem}.json", folder / f"{stem}.safetensors"


def edit_json(folder, kind, change):
    cfg_file, _ = paths(folder, kind)
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    change(cfg)
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")


def test_every_saved_class_is_covered():
    saved = {name for name in dir(sn) if hasattr(getattr(sn, name), "save") and isinstance(getattr(sn, name), type)}
    assert saved == set(ARTIFACTS) and set(ERRORS) == set(ARTIFACTS)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(tmp_path, made, kind):
    obj = made[kind]
    folder = obj.save(tmp_path / kind)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths(folder, kind))
    cfg = json.loads(paths(folder, kind)[0].read_text(encoding="utf-8"))
    assert (cfg["kind"], cfg["format_version"]) == (kind, FORMAT_VERSION)
    loaded = CLASSES[kind].load(folder)
    assert same(loaded, obj)
    assert same(CLASSES[kind].load(loaded.save(tmp_path / "again")), obj)


def test_the_same_check_tells_a_changed_object():  # `same` can fail: the round trip means something
    a = sn.NeuronScaling({1: [0, 2]}, alpha=2.0)
    assert same(a, sn.NeuronScaling({1: [0, 2]}, alpha=2.0))
    assert not same(a, sn.NeuronScaling({1: [0, 3]}, alpha=2.0)) and not same(
        a, sn.NeuronScaling({1: [0, 2]}, alpha=2.5)
    )
    t = torch.arange(3.0)
    assert not same(t, t.double()) and not same(t, t + 1) and not same({"a": t}, {"b": t})


@pytest.mark.parametrize("kind", KINDS)
def test_a_folder_of_another_kind_is_named(tmp_path, made, kind):
    folder = made[kind].save(tmp_path / kind)
    for other in KINDS:
        if other != kind:
            with pytest.raises(ERRORS[other], match=f"holds a {kind}, not a {other}; read it with {kind}.load"):
                CLASSES[other].load(folder)


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrong_kind_field_is_an_error(tmp_path, made, kind):
    folder = made[kind].save(tmp_path / kind)
    edit_json(folder, kind, lambda cfg: cfg.update(kind="Something"))
    with pytest.raises(ERRORS[kind], match=f"{ARTIFACTS[kind]}\\.json: holds a 'Something', not a {kind}"):
        CLASSES[kind].load(folder)


@pytest.mark.parametrize("kind", KINDS)
def test_a_newer_format_asks_for_an_upgrade(tmp_path, made, kind):
    folder = made[kind].save(tmp_path / kind)
    edit_json(folder, kind, lambda cfg: cfg.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ERRORS[kind], match=f"format_version {FORMAT_VERSION + 1} is newer .*upgrade safety-neurons"):
        CLASSES[kind].load(folder)


def _change_a_value(t: dict) -> None:  # same names, shapes and dtypes, one value changed
    key = max((k for k in t if t[k].numel()), key=lambda k: t[k].numel())
    v = t[key].clone()
    v.view(-1)[0] = ~v.view(-1)[0] if v.dtype == torch.bool else v.view(-1)[0] + 1
    t[key] = v


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "Evaluation"])  # an evaluation has no tensors
def test_a_changed_tensor_fails_the_integrity_check(tmp_path, made, kind):
    folder = made[kind].save(tmp_path / kind)
    _, tensor_file = paths(folder, kind)
    t = load_file(tensor_file)
    _change_a_value(t)
    save_file(t, tensor_file)
    with pytest.raises(ERRORS[kind], match=f"{ARTIFACTS[kind]}\\.safetensors: the tensors .* do not match the sha256"):
        CLASSES[kind].load(folder)


FIELD = {
    "WeightEdit": "fingerprint",
    "SafetyNeurons": "langs",
    "ActivationStats": "position",
    "RefusalDirection": "norm",
    "NeuronScaling": "alpha",
    "HarmDetector": "model",
    "Evaluation": "judge",
    "Collection": "n_tokens",
}
OTHER = {
    "fingerprint": "0" * 64,
    "langs": ["zh", "en"],
    "position": "mean",
    "norm": 1.0,
    "alpha": 3.0,
    "model": "x",
    "judge": "guard",
    "n_tokens": 10**6,
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_field_fails_the_integrity_check(tmp_path, made, kind):
    folder = made[kind].save(tmp_path / kind)
    edit_json(folder, kind, lambda cfg: cfg.update({FIELD[kind]: OTHER[FIELD[kind]]}))
    with pytest.raises(ERRORS[kind], match="do not match the sha256"):
        CLASSES[kind].load(folder)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda j, t: j.write_text("{not json"), "{json}: not valid JSON"),
        (lambda j, t: j.unlink(), "{json}: file not found"),
        (lambda j, t: t.unlink(), "{tensors}: file not found"),
        (lambda j, t: t.write_bytes(t.read_bytes()[: t.stat().st_size // 2]), "{tensors}: not a readable safetensors"),
        (
            lambda j, t: j.write_text(
                json.dumps({k: v for k, v in json.loads(j.read_text()).items() if k != "sha256"})
            ),
            r"{json}: missing field.*sha256",
        ),
        (lambda j, t: save_file({**load_file(t), "extra": torch.zeros(2)}, t), r"{tensors}: holds tensors .*extra"),
    ],
)
def test_damaged_files_are_named(tmp_path, made, kind, damage, match):
    folder = made[kind].save(tmp_path / kind)
    cfg_file, tensor_file = paths(folder, kind)
    damage(cfg_file, tensor_file)
    with pytest.raises(
        ERRORS[kind], match=match.format(json=cfg_file.name, tensors=tensor_file.name).replace(".", r"\.", 1)
    ):
        CLASSES[kind].load(folder)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "Evaluation"])
def test_a_tensor_of_another_shape_is_named(tmp_path, made, kind):
    folder = made[kind].save(tmp_path / kind)
    _, tensor_file = paths(folder, kind)
    t = load_file(tensor_file)
    key = sorted(t)[0]
    t[key] = torch.cat([t[key], t[key][:1]])
    save_file(t, tensor_file)
    with pytest.raises(ERRORS[kind], match=f"tensor '{key}' has shape"):
        CLASSES[kind].load(folder)


def test_shapes_are_checked_against_the_other_fields(tmp_path, made):
    """A file written consistently (hash and all) whose tensors do not fit its languages × layers."""
    from safety_neurons._checks import write_artifact

    r = made["SafetyNeurons"]
    fields = {"langs": r.langs[:1], "layers": r.layers, "settings": r.settings}
    write_artifact(tmp_path / "r", "SafetyNeurons", {k: getattr(r, k) for k in r._TENSORS}, fields)
    with pytest.raises(
        sn.NeuronsError, match=r"tensor 'delta' has shape \[2, 3, 48\], neurons\.json gives \[1, 3, '\*'\]"
    ):
        sn.SafetyNeurons.load(tmp_path / "r")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [None, 1.5, [], {}, True, "", "FILE"])
def test_save_to_a_bad_path_is_an_error(tmp_path, made, kind, bad):
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(ERRORS[kind], match="path"):
        made[kind].save(tmp_path / "file" if bad == "FILE" else bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "keep me"


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(sn.EditError, match="no such folder"):
        sn.WeightEdit.load(tmp_path / "nothing")


def test_an_unserialisable_field_is_an_error_and_writes_nothing(tmp_path, made):
    ev = made["Evaluation"]
    bad = sn.Evaluation(ev.judge, ev.languages, ev.answers, {"model": object()})
    with pytest.raises(sn.EvaluationError, match="not JSON"):
        bad.save(tmp_path / "ev")
    assert not (tmp_path / "ev").exists()


# --- folders written before format 2 ---------------------------------------------------------------------------
def test_the_shipped_detector_loads():
    """tests/data/switch_detector_qwen_L20 (format 1, the detector's own: no sha256) is what test_real_model uses."""
    det = sn.HarmDetector.load(DATA / "switch_detector_qwen_L20")
    assert det.layer == 20 and det.probe.shape == (896,) and det.usage.shape == (4864,) and det.model


def _as_before_format_2(folder, kind, make_hash):
    """Rewrite a saved folder as the code before format 2 wrote it: no kind, version or shapes; the edit's neuron
    map under "{i}.map"; a sha256 of the tensors and `make_hash`'s fields (None: no sha256)."""
    from safety_neurons._checks import content_hash

    cfg_file, tensor_file = paths(folder, kind)
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    for key in ("kind", "format_version", "tensors", "sha256"):
        cfg.pop(key)
    t = {k.replace(".neuron_map", ".map"): v for k, v in load_file(tensor_file).items()}
    save_file(t, tensor_file)
    if make_hash is not None:
        cfg["sha256"] = content_hash(t, make_hash(cfg))
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    return t


LEGACY = {  # kind: what its sha256 covered besides the tensors before format 2 (None: no sha256, the uid)
    "WeightEdit": None,
    "SafetyNeurons": lambda c: json.dumps({"langs": c["langs"], "layers": c["layers"]}),
    "RefusalDirection": lambda c: json.dumps({"layer": c["layer"], "norm": float(c["norm"])}),
    "ActivationStats": lambda c: "",
}


@pytest.mark.parametrize("kind", list(LEGACY))
def test_folders_saved_before_format_2_load_and_are_still_checked(tmp_path, made, kind):
    folder = made[kind].save(tmp_path / kind)
    t = _as_before_format_2(folder, kind, LEGACY[kind])
    if kind == "WeightEdit":
        assert any(k.endswith(".map") for k in t)
    assert same(CLASSES[kind].load(folder), made[kind])
    _change_a_value(t)
    save_file(t, paths(folder, kind)[1])
    with pytest.raises(ERRORS[kind], match="uid" if kind == "WeightEdit" else "sha256"):
        CLASSES[kind].load(folder)
    check = "uid" if kind == "WeightEdit" else "sha256"  # the field they carried is required, as it was then
    edit_json(folder, kind, lambda cfg: cfg.pop(check))
    with pytest.raises(ERRORS[kind], match=f"missing field.*{check}"):
        CLASSES[kind].load(folder)
