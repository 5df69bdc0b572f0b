"""Argument checks shared by the public functions, safe file writing, and the one artifact format.

Each check takes the argument's name, its value and the module's error type, and raises that error
with a message naming the argument, the bad value and what is allowed. Nothing here does any work
beyond looking at the value.

Every saved object is an artifact folder written by `write_artifact` and read by `read_artifact` (the
`Artifact` mixin gives a class its `save` / `load` through them; `FORMAT_VERSION` describes the layout).
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


def as_records(
    name: str, value, kind: type | tuple, error: type[Exception] = ValueError, *, allow_empty: bool = False
) -> list:
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
        raise error(
            f"{name} must be a model from load_model or bridge_from_hf (a TransformerBridge), "
            f"got {type(model).__name__} {_show(model)}"
        )
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


def check_number(
    name: str, value, error: type[Exception] = ValueError, *, minimum: float | None = None, strict: bool = False
) -> float:
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
    """A folder to write into: it may exist (as a folder), but must not be a file. An empty string is refused
    (it would be the working directory)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
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


# --- artifact folders --------------------------------------------------------------------------------
FORMAT_VERSION = 2
"""The layout every saved object shares: ``<stem>.safetensors`` (the tensors) and ``<stem>.json``, whose
fields are the object's own plus ``kind`` (the class), ``format_version``, ``tensors`` (each one's dtype and
shape) and ``sha256`` (of the tensors and every other field). Version 1 was the harm detector's own layout
and files without a version the other classes' (no ``kind``): both are still read, with the checks they
carried (their ``sha256`` where they had one)."""

ARTIFACTS = {
    "WeightEdit": "edit",
    "SafetyNeurons": "neurons",
    "ActivationStats": "stats",
    "RefusalDirection": "direction",
    "NeuronScaling": "scaling",
    "HarmDetector": "detector",
    "Evaluation": "evaluation",
    "Collection": "collection",
}
"""kind → the file stem of its folder."""


def _fields_text(cfg: dict) -> str:
    """What an artifact's hash covers besides the tensors: every JSON field but the hash itself."""
    return json.dumps({k: v for k, v in cfg.items() if k != "sha256"}, sort_keys=True, ensure_ascii=False)


def write_artifact(path, kind: str, tensors: dict, fields: dict, error: type[Exception] = ValueError) -> Path:
    """Save an object as an artifact folder, atomically: `kind`'s stem .safetensors (the tensors, made
    contiguous) and .json (`fields` plus kind, format_version, the tensors' shapes and a sha256)."""
    from safetensors.torch import save_file

    path = check_out_dir("path", path, error)
    stem = ARTIFACTS[kind]
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    shapes = {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)} for k, v in tensors.items()}
    try:  # as it will be read back: tuples become lists, integer keys strings
        cfg = json.loads(
            json.dumps(
                {"kind": kind, "format_version": FORMAT_VERSION, **fields, "tensors": shapes}, ensure_ascii=False
            )
        )
    except (TypeError, ValueError) as err:
        raise error(f"cannot save the {kind}: a field is not JSON ({err})") from None
    cfg["sha256"] = content_hash(tensors, _fields_text(cfg))
    with atomic_dir(path) as tmp:
        save_file(tensors, tmp / f"{stem}.safetensors")
        (tmp / f"{stem}.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def _kind_in(folder: Path) -> str | None:
    """The kind of the artifact a folder holds, judged by its JSON file's name and `kind` field."""
    for kind, stem in ARTIFACTS.items():
        if (folder / f"{stem}.json").is_file():
            try:
                return json.loads((folder / f"{stem}.json").read_text(encoding="utf-8")).get("kind", kind)
            except (OSError, ValueError, AttributeError):
                return kind
    return None


def read_artifact(
    path, kind: str, error: type[Exception] = ValueError, *, fields: Iterable[str] = (), expect=None, legacy_meta=None
) -> tuple[dict, dict]:
    """(fields, tensors) of an artifact folder `write_artifact` wrote, every check done: the folder holds
    a `kind`, of a format this version reads, with the `fields` named, its tensors of the recorded shapes
    (and of `expect(fields)`: name → shape, None for any size or any shape) and matching the recorded sha256.
    `legacy_meta(fields)`: what the sha256 of a file older than format 2 covered besides the tensors (None:
    such files had no sha256).
    Every failure is an `error` naming the file."""
    path = as_path("path", path, error)
    stem = ARTIFACTS[kind]
    cfg_file, tensor_file = path / f"{stem}.json", path / f"{stem}.safetensors"
    if not path.is_dir():
        raise error(f"{path}: no such folder (expected a folder with {stem}.json and {stem}.safetensors)")
    if not cfg_file.is_file() and (other := _kind_in(path)) is not None:
        raise error(f"{path} holds a {other}, not a {kind}; read it with {other}.load")
    cfg = read_json(cfg_file, error)
    version = cfg.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise error(f"{cfg_file}: format_version must be an integer, got {_show(version)}")
    if version > FORMAT_VERSION:
        raise error(
            f"{cfg_file}: format_version {version} is newer than this safety-neurons reads "
            f"({FORMAT_VERSION}); upgrade safety-neurons to read it"
        )
    if cfg.get("kind", kind) != kind:
        raise error(f"{cfg_file}: holds a {_show(cfg['kind'])}, not a {kind}")
    current = version == FORMAT_VERSION
    require(cfg, fields, cfg_file, error)
    try:  # what the hash covers besides the tensors; the shapes recorded, then those the other fields imply
        meta = _fields_text(cfg) if current else legacy_meta(cfg) if legacy_meta is not None else None
        shapes = [(k, v["shape"]) for k, v in cfg.get("tensors", {}).items()] if current else []
        shapes += list(dict(expect(cfg)).items()) if expect is not None else []
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise error(f"{cfg_file}: malformed fields ({type(err).__name__}: {err})") from None
    require(cfg, ("tensors", "sha256") if current else ("sha256",) if meta is not None else (), cfg_file, error)
    t = read_tensors(tensor_file, error)
    if current and set(t) != set(cfg["tensors"]):
        raise error(f"{tensor_file}: holds tensors {sorted(t)}, {cfg_file.name} records {sorted(cfg['tensors'])}")
    for name, shape in shapes:
        if name not in t:
            raise error(f"{tensor_file}: missing tensor {name!r}")
        got = list(t[name].shape)
        if shape is None:
            continue
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            raise error(
                f"{tensor_file}: tensor {name!r} has shape {got}, {cfg_file.name} gives "
                f"{[s if s is not None else '*' for s in shape]}"
            )
    if meta is not None and content_hash(t, meta) != cfg["sha256"]:
        raise error(
            f"{tensor_file}: the tensors (or the fields of {cfg_file.name}) do not match the sha256 "
            f"recorded there: the artifact was changed or damaged; save it again"
        )
    return cfg, t


class Artifact:
    """`save` / `load` for a class saved as an artifact folder (`write_artifact` / `read_artifact`, kind: the
    class's name). By default the JSON holds the fields named in `_FIELDS` and the safetensors file those in
    `_TENSORS`, passed back to the constructor by name; a class saved in another form overrides `_saved` /
    `_from_saved`, and names the tensor shapes its fields imply in `_shapes`."""

    _FIELDS: tuple[str, ...] = ()
    _TENSORS: tuple[str, ...] = ()
    _ERROR: type[Exception] = ValueError

    def _saved(self) -> tuple[dict, dict]:
        """(tensors, JSON fields) to write."""
        return {k: getattr(self, k) for k in self._TENSORS}, {k: getattr(self, k) for k in self._FIELDS}

    @classmethod
    def _from_saved(cls, fields: dict, tensors: dict):
        return cls(**{k: fields[k] for k in cls._FIELDS}, **{k: tensors[k] for k in cls._TENSORS})

    @classmethod
    def _shapes(cls, fields: dict) -> dict:
        """name → shape of the tensors the fields imply (a None size: any size; None: any shape)."""
        return {k: None for k in cls._TENSORS}

    @classmethod
    def _legacy_meta(cls, fields: dict) -> str | None:
        """What the sha256 of a folder written before format 2 covered besides the tensors (None: it had none)."""
        return None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the folder `path` (`<stem>.safetensors` and `<stem>.json`, with kind, format_version, shapes and
        a sha256), atomically: after an error nothing half-written is left."""
        tensors, fields = self._saved()
        return write_artifact(path, type(self).__name__, tensors, fields, self._ERROR)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a folder `save` wrote: a folder of another kind or of a newer format, a missing field or tensor, a
        tensor of another shape and any change to the tensors or fields are each an error naming the file."""
        fields, tensors = read_artifact(
            path, cls.__name__, cls._ERROR, fields=cls._FIELDS, expect=cls._shapes, legacy_meta=cls._legacy_meta
        )
        try:
            return cls._from_saved(fields, tensors)
        except (KeyError, TypeError, ValueError) as err:  # a field the constructor refuses
            what = err if isinstance(err, cls._ERROR) else f"malformed fields ({type(err).__name__}: {err})"
            raise cls._ERROR(f"{Path(path) / (ARTIFACTS[cls.__name__] + '.json')}: {what}") from None


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
