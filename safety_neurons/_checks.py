"""Argument checks shared by the public functions, and safe file writing.

Each check takes the argument's name, its value and the module's error type, and raises that error
with a message naming the argument, the bad value and what is allowed. Nothing here does any work
beyond looking at the value.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_str_list(name: str, value, error: type[Exception] = ValueError, *, allow_empty: bool = False) -> list[str]:
    """A list of strings from a list/tuple/set of strings. A bare string is refused: iterating it would
    read it character by character."""
    if isinstance(value, str):
        raise error(f"{name} must be a list of strings, got the single string {_show(value)}; write [{value!r}]")
    if not isinstance(value, Iterable):
        raise error(f"{name} must be a list of strings, got {type(value).__name__} {_show(value)}")
    out = list(value)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise error(f"{name} must hold strings only, got {_show(bad[0])} ({type(bad[0]).__name__})")
    if not out and not allow_empty:
        raise error(f"{name} is empty")
    return out


def str_or_list(name: str, value, error: type[Exception] = ValueError) -> list[str]:
    """One string or a list of strings, as a list (for arguments documented as 'a value or a list')."""
    return [value] if isinstance(value, str) else as_str_list(name, value, error)


def as_records(name: str, value, kind: type | tuple, error: type[Exception] = ValueError, *,
               allow_empty: bool = False) -> list:  # fmt: skip
    """A list of `kind` records (e.g. Prompt) from a list, tuple or PromptSet. A string, a number or a
    record of another kind is refused, and so is an empty list unless `allow_empty`."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    what = " or ".join(k.__name__ for k in kinds)
    if isinstance(value, (str, bytes)):
        raise error(f"{name} must be a list of {what} records, got the string {_show(value)}")
    if not isinstance(value, Iterable) or isinstance(value, kinds):
        raise error(f"{name} must be a list of {what} records, got {type(value).__name__} {_show(value)}")
    out = list(value)
    bad = next((v for v in out if not isinstance(v, kinds)), None)
    if bad is not None:
        raise error(f"{name} must hold {what} records only, got {type(bad).__name__} {_show(bad)}")
    if not out and not allow_empty:
        raise error(f"no {name} given: the list is empty")
    return out


def as_path(name: str, value, error: type[Exception] = ValueError) -> Path:
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise error(f"{name} must be a file path, got {type(value).__name__} {_show(value)}")
    return Path(value).expanduser()


def check_model(model, error: type[Exception] = ValueError, name: str = "model"):
    """A model as `load_model` / `bridge_from_hf` give it (a TransformerBridge: a tokenizer and a config)."""
    cfg = getattr(model, "cfg", None)
    if getattr(model, "tokenizer", None) is None or not all(hasattr(cfg, a) for a in ("n_layers", "d_mlp", "d_model")):
        raise error(f"{name} must be a model from load_model or bridge_from_hf (a TransformerBridge), "
                    f"got {type(model).__name__} {_show(model)}")  # fmt: skip
    return model


def check_int(name: str, value, error: type[Exception] = ValueError) -> int:
    """An integer (bool and float are refused: 2.5 layers or True neurons are mistakes)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer, got {type(value).__name__} {_show(value)}")
    return int(value)


def check_positive_int(name: str, value, error: type[Exception] = ValueError, *, minimum: int = 1) -> int:
    value = check_int(name, value, error)
    if value < minimum:
        raise error(f"{name} must be an integer ≥ {minimum}, got {value}")
    return value


def as_int_list(name: str, value, error: type[Exception] = ValueError, *, allow_empty: bool = False) -> list[int]:
    """One integer or a non-empty list of integers, as a list. A string ('12') is refused, and so are
    floats (1.5 would be truncated), bools and float / bool tensors."""
    if isinstance(value, str):
        raise error(f"{name} must be an integer or a list of integers, got the string {_show(value)}")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value)]
    dtype = getattr(value, "dtype", None)  # a tensor or an array: its dtype decides, not its items
    if dtype is not None and not _integer_dtype(dtype):
        raise error(f"{name} must hold integers, got a {dtype} {type(value).__name__}")
    if dtype is not None and getattr(value, "ndim", 1) == 0:
        return [int(value)]
    if not isinstance(value, Iterable):
        raise error(f"{name} must be an integer or a list of integers, got {type(value).__name__} {_show(value)}")
    if dtype is not None:
        return [int(v) for v in value.reshape(-1).tolist()]
    out = [check_int(f"each of {name}", v, error) for v in value]
    if not out and not allow_empty:
        raise error(f"{name} is empty")
    return out


def as_layers(name: str, value, n_layers: int, error: type[Exception] = ValueError) -> list[int]:
    """One layer or a list of layers, sorted and unique, each in [0, n_layers)."""
    layers = sorted(set(as_int_list(name, value, error)))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise error(f"{name} {bad} out of range: the model has {n_layers} layers (0…{n_layers - 1})")
    return layers


def _integer_dtype(dtype) -> bool:
    text = str(dtype).removeprefix("torch.")
    return text.startswith(("int", "uint", "long", "short")) and text != "bool"


def as_indices(name: str, value, error: type[Exception] = ValueError, *, size: int | None = None):
    """Integer indices (an integer, a list of integers, an integer tensor or array) as a sorted, unique 1-D
    long tensor, each in [0, size) when `size` is given. Floats and bools are refused (a float index would
    be truncated, a bool list is a mask); an empty set is returned as is, for the caller to judge."""
    import torch

    idx = as_int_list(name, value, error, allow_empty=True)
    if size is not None:
        bad = [i for i in idx if not 0 <= i < size]
        if bad:
            raise error(f"{name}: indices {_show(bad)} out of range; allowed 0…{size - 1}")
    return torch.tensor(sorted(set(idx)), dtype=torch.long)


def check_number(name: str, value, error: type[Exception] = ValueError, *, minimum: float | None = None,
                 strict: bool = False) -> float:  # fmt: skip
    """A finite real number, ≥ minimum (> minimum when strict)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number, got {type(value).__name__} {_show(value)}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise error(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise error(f"{name} must be {'>' if strict else '≥'} {minimum}, got {value}")
    return value


def check_choice(name: str, value, allowed: Iterable, error: type[Exception] = ValueError):
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable
        ok = False
    if not ok:
        hint = ""
        if isinstance(value, str):
            close = [a for a in allowed if isinstance(a, str) and a.casefold() == value.strip().casefold()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise error(f"unknown {name} {_show(value)}{hint}; choose one of {', '.join(map(str, allowed))}")
    return value


def check_out_dir(name: str, path, error: type[Exception] = ValueError) -> Path:
    """A folder to write into: it may exist (as a folder), but must not be a file."""
    if not isinstance(path, (str, os.PathLike)):
        raise error(f"{name} must be a path, got {type(path).__name__} {_show(path)}")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise error(f"{name}: {path} exists and is not a folder; choose another path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise error(f"{name}: {parent} is a file, so {path} cannot be created")
            break
    return path


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Write a folder's content into a temporary sibling, then move it into place: after an error
    nothing half-written is left at `path` (an existing folder at `path` keeps its old content)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.is_dir():
            for item in tmp.iterdir():  # replace file by file: other files in the folder stay
                target = path / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_artifact(path: Path, stem: str, tensors: dict, cfg: dict) -> Path:
    """An artifact folder, atomically: `stem`.safetensors (the tensors, made contiguous) and `stem`.json."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / f"{stem}.safetensors")
        (tmp / f"{stem}.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def read_json(path: Path, error: type[Exception] = ValueError) -> dict:
    """A JSON object from a file; every failure names the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_tensors(path: Path, error: type[Exception] = ValueError) -> dict:
    """The tensors of a safetensors file; a missing, truncated or corrupt file names the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own SafetensorError / OSError on bad files
        raise error(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None


def require(cfg: dict, keys: Iterable[str], where: Path, error: type[Exception] = ValueError) -> None:
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise error(f"{where}: missing field(s) {missing}; the file is damaged or not written by safety-neurons")


def content_hash(tensors: dict, extra: str = "") -> str:
    """A short sha256 of named tensors (and a string): the integrity field of a saved artifact."""
    import hashlib

    import torch

    h = hashlib.sha256(extra.encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@contextmanager
def wrap_errors(error: type[Exception], what, kinds: tuple = (OSError, ValueError)) -> Iterator[None]:
    """`with wrap_errors(ModelLoadError, path): ...` turns the low-level errors `kinds` raised inside
    (struct.error, UnicodeDecodeError, …) into `error`, naming `what` (a file, usually)."""
    try:
        yield
    except error:
        raise
    except kinds as err:
        raise error(f"{what}: {type(err).__name__}: {err}") from err
