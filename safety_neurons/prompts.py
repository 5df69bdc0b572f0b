"""Parallel multilingual prompt sets: the bundled set, public benchmarks, user files.

A `PromptSet` holds `Prompt` records (`id`, `lang`, `label`, `category`, `split`, `text`). The same
`id` in two languages means the two texts are translations of one request, which is how the edit
lines low-resource-language rows up with their English rows.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ._checks import as_path, check_choice, check_int, str_or_list

LANGS: tuple[str, ...] = ("en", "zh", "vi", "ja", "th", "id", "bn", "he")
LANG_NAMES = {
    "en": "English",
    "zh": "Chinese",
    "vi": "Vietnamese",
    "ja": "Japanese",
    "th": "Thai",
    "id": "Indonesian",
    "bn": "Bengali",
    "he": "Hebrew",
}
LABELS = ("harmful", "harmless")
SPLITS = ("anchor", "val", "test")


class PromptSetError(ValueError):
    """A prompt set failed validation; the message lists every problem found."""


def check_langs(langs: Iterable[str], name: str = "langs") -> list[str]:
    """A list of supported language codes (one code is taken as a list of one)."""
    langs = str_or_list(name, langs, PromptSetError)
    unknown = [lang for lang in langs if lang not in LANGS]
    if unknown:
        hint = [x for x in LANGS if x in {u.strip().casefold() for u in unknown}]
        raise PromptSetError(
            f"unknown language {unknown} in {name}; supported: {', '.join(LANGS)}"
            + (f" (did you mean {hint}?)" if hint else "")
        )
    return langs


@dataclass(frozen=True)
class Prompt:
    id: str
    lang: str
    label: str
    text: str
    category: str = ""
    split: str = ""


@dataclass(frozen=True)
class MCQuestion:
    """A four-option multiple-choice question (utility benchmark)."""

    id: str
    lang: str
    category: str
    question: str
    choices: tuple[str, ...]
    answer: int


# --- scripts ---------------------------------------------------------------------------------------
_SCRIPT_RANGES = {
    "cjk": [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF)],
    "kana": [(0x3040, 0x30FF), (0x31F0, 0x31FF)],
    "thai": [(0x0E00, 0x0E7F)],
    "bengali": [(0x0980, 0x09FF)],
    "hebrew": [(0x0590, 0x05FF)],
    "latin": [(0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F), (0x1E00, 0x1EFF)],
}
_VI_MARKS = set("ăâđêôơưĂÂĐÊÔƠƯ") | {chr(c) for c in range(0x1EA0, 0x1EFA)}


def _script_of(ch: str) -> str | None:
    cp = ord(ch)
    for name, ranges in _SCRIPT_RANGES.items():
        if any(lo <= cp <= hi for lo, hi in ranges):
            return name
    return None


def script_problem(text: str, lang: str) -> str | None:
    """Why `text` is not in `lang`'s script, or None when it is."""
    letters = [c for c in unicodedata.normalize("NFC", text) if c.isalpha()]
    if not letters:
        return "no letters"
    counts = Counter(_script_of(c) for c in letters)
    share = {k: v / len(letters) for k, v in counts.items()}
    expected = {"zh": "cjk", "ja": "cjk+kana", "th": "thai", "bn": "bengali", "he": "hebrew"}.get(lang, "latin")
    if lang == "ja":
        if share.get("kana", 0) == 0 or share.get("cjk", 0) + share.get("kana", 0) < 0.5:
            return "Japanese text without kana or mostly outside CJK/kana"
        return None
    if lang == "zh" and share.get("kana", 0) > 0:
        return "Chinese text contains Japanese kana"
    if share.get(expected, 0) < 0.5:
        main = counts.most_common(1)[0][0]
        return f"mostly {main or 'other'} script, expected {expected}"
    if lang == "vi" and not any(c in _VI_MARKS for c in text):
        return "Vietnamese text without Vietnamese diacritics"
    if lang in ("en", "id") and any(c in _VI_MARKS for c in text):
        return "Vietnamese-only letters in a non-Vietnamese Latin text"
    return None


def _balanced_head(prompts: list[Prompt], limit: int) -> list[Prompt]:
    if limit < 0:
        raise ValueError(f"limit must be ≥ 0, got {limit}")
    groups: dict[tuple[str, str], list[Prompt]] = defaultdict(list)
    for p in prompts:
        groups[(p.lang, p.label)].append(p)
    keep: set[int] = set()
    for rows in groups.values():
        seen: Counter = Counter()
        ranked = []
        for i, p in enumerate(rows):
            ranked.append((seen[p.category], i, p))
            seen[p.category] += 1
        keep |= {id(p) for _, _, p in sorted(ranked, key=lambda r: (r[0], r[1]))[:limit]}
    return [p for p in prompts if id(p) in keep]


_PAIRS = {"(": ")", "[": "]", "{": "}", "“": "”", "«": "»", "「": "」", "『": "』", "（": "）"}


def _truncated(text: str) -> str | None:
    """Why a text looks cut off (a CSV split at an unquoted comma, a broken export), or None."""
    t = text.strip()
    # a quote between two letters is an abbreviation mark (Hebrew gershayim: עו"ש), not a quotation
    if len(re.findall(r'(?<!\w)"|"(?!\w)', t)) % 2:
        return "an unmatched double quote"
    for a, b in _PAIRS.items():
        if t.count(a) > t.count(b):
            return f"an unclosed {a!r}"
    if t[-1] in ",;:-–—、，；：" and not t.endswith(("...", "…")):
        return f"it ends with {t[-1]!r}"
    return None


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


# --- the set ---------------------------------------------------------------------------------------
class PromptSet(Sequence[Prompt]):
    """An ordered, filterable collection of prompts that knows its parallel structure."""

    def __init__(self, prompts: Iterable[Prompt], name: str = "custom"):
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Iterable):
            raise PromptSetError(f"PromptSet takes Prompt records, got {type(prompts).__name__}")
        self.prompts: list[Prompt] = list(prompts)
        bad = next((p for p in self.prompts if not isinstance(p, Prompt)), None)
        if bad is not None:
            raise PromptSetError(f"PromptSet takes Prompt records, got a {type(bad).__name__}: {bad!r:.60}")
        self.name = name

    # sequence protocol
    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return PromptSet(self.prompts[i], self.name)
        return self.prompts[i]

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def __add__(self, other: PromptSet) -> PromptSet:
        return PromptSet(self.prompts + list(other), self.name)

    def __repr__(self) -> str:
        return (
            f"PromptSet({self.name!r}, {len(self)} prompts, langs={self.langs}, "
            f"labels={self.labels}, splits={self.splits})"
        )

    @property
    def langs(self) -> list[str]:
        return list(dict.fromkeys(p.lang for p in self))

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(p.label for p in self))

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(p.split for p in self))

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(p.category for p in self))

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self]

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self]

    def filter(
        self,
        *,
        lang: str | Iterable[str] | None = None,
        label: str | Iterable[str] | None = None,
        split: str | Iterable[str] | None = None,
        category: str | Iterable[str] | None = None,
        ids: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> PromptSet:
        """Prompts matching every given field (a value or a list of values). `limit` keeps `limit`
        prompts of each (lang, label) group, taken round-robin across categories (the first of each
        category, then the second, …) so a small subset still covers every category; the choice
        depends only on ids and categories, so limited subsets stay parallel across languages.
        Unknown languages, labels and splits are errors (not an empty set)."""

        def as_set(key, v):
            return None if v is None else set(str_or_list(key, v, PromptSetError))

        want = {
            "lang": as_set("lang", lang),
            "label": as_set("label", label),
            "split": as_set("split", split),
            "category": as_set("category", category),
        }
        if want["lang"]:
            check_langs(sorted(want["lang"]), "lang")
        # labels and splits have a fixed vocabulary (plus any split this set actually uses): a typo such
        # as split="tset" must not quietly give an empty set
        vocab = {"label": LABELS, "split": tuple(dict.fromkeys([*SPLITS, *(x for x in self.splits if x)]))}
        for key, allowed in vocab.items():
            for value in sorted(want[key] or ()):
                check_choice(key, value, allowed, PromptSetError)
        idset = None if ids is None else set(str_or_list("ids", ids, PromptSetError))
        if limit is not None and check_int("limit", limit, PromptSetError) < 0:
            raise PromptSetError(f"limit must be ≥ 0, got {limit}")
        out = [
            p
            for p in self
            if all(v is None or getattr(p, k) in v for k, v in want.items()) and (idset is None or p.id in idset)
        ]
        if limit is not None:
            out = _balanced_head(out, limit)
        return PromptSet(out, self.name)

    def parallel(self, lang: str, *, pivot: str = "en") -> list[tuple[Prompt, Prompt]]:
        """(`lang` prompt, `pivot` prompt) pairs with the same id, in `lang`'s order."""
        check_langs([lang, pivot])
        pivot_rows = {p.id: p for p in self if p.lang == pivot}
        rows = [p for p in self if p.lang == lang]
        if not rows:
            raise ValueError(f"no prompts in language {lang!r} in this set")
        missing = [p.id for p in rows if p.id not in pivot_rows]
        if missing:
            raise PromptSetError(
                f"mismatched parallel sets: {len(missing)} {lang} prompts have no {pivot} translation, "
                f"e.g. {missing[:3]}"
            )
        return [(p, pivot_rows[p.id]) for p in rows]

    def chat(self, tokenizer, *, system: str | None = None) -> list[str]:
        """The prompts rendered with the tokenizer's chat template (generation prompt appended)."""
        from .chat import chat_strings

        return chat_strings(tokenizer, self.texts, system=system)

    # --- validation ----------------------------------------------------------------------------
    def problems(self, *, pivot: str = "en", check_script: bool = True) -> list[str]:
        """Every problem found: missing translations, id/field mismatches, empty or duplicate texts,
        wrong scripts, split leaks (an id or a near-duplicate text in two splits)."""
        found: list[str] = []
        seen: set[tuple[str, str]] = set()
        by_lang_text: dict[str, dict[str, str]] = defaultdict(dict)
        for p in self:
            key = (p.lang, p.id)
            if p.lang not in LANGS:
                found.append(f"{p.id}: unknown language {p.lang!r}")
                continue
            if key in seen:
                found.append(f"{p.lang}/{p.id}: duplicate id")
            seen.add(key)
            if p.label not in LABELS:
                found.append(f"{p.lang}/{p.id}: label {p.label!r} is not one of {LABELS}")
            if p.split and p.split not in SPLITS:
                found.append(f"{p.lang}/{p.id}: split {p.split!r} is not one of {SPLITS}")
            if not p.text or not p.text.strip():
                found.append(f"{p.lang}/{p.id}: empty text")
                continue
            if why := _truncated(p.text):
                found.append(f"{p.lang}/{p.id}: text looks truncated ({why})")
            norm = " ".join(p.text.casefold().split())
            if norm in by_lang_text[p.lang]:
                found.append(f"{p.lang}/{p.id}: same text as {by_lang_text[p.lang][norm]}")
            by_lang_text[p.lang][norm] = p.id
            if check_script and (why := script_problem(p.text, p.lang)):
                found.append(f"{p.lang}/{p.id}: wrong script ({why})")
        # parallel structure: the same ids, with the same label/category/split, in every language
        fields: dict[str, dict[str, tuple]] = defaultdict(dict)
        for p in self:
            fields[p.lang][p.id] = (p.label, p.category, p.split)
        if len(fields) > 1:
            reference = pivot if pivot in fields else next(iter(fields))
            ref = fields[reference]
            for lang, rows in fields.items():
                if lang == reference:
                    continue
                for pid in sorted(set(ref) - set(rows)):
                    found.append(f"{lang}/{pid}: missing translation of {reference}/{pid}")
                for pid in sorted(set(rows) - set(ref)):
                    found.append(f"{lang}/{pid}: id not in {reference} (id mismatch)")
                for pid in sorted(set(rows) & set(ref)):
                    if rows[pid] != ref[pid]:
                        found.append(
                            f"{lang}/{pid}: label/category/split {rows[pid]} differ from {reference}'s {ref[pid]}"
                        )
        found += self._split_leaks(pivot)
        return found

    def _split_leaks(self, pivot: str) -> list[str]:
        rows = [p for p in self if p.lang == pivot and p.split] or [p for p in self if p.split]
        out = []
        words = [(_words(p.text), p) for p in rows]
        for i, (wa, a) in enumerate(words):
            for wb, b in words[i + 1 :]:
                if a.split == b.split or a.lang != b.lang:
                    continue
                if a.id == b.id:
                    out.append(f"split leak: {a.id} is in both {a.split} and {b.split}")
                elif wa and wb and len(wa & wb) / len(wa | wb) > 0.8:
                    out.append(f"split leak: near-duplicate texts {a.id} ({a.split}) and {b.id} ({b.split})")
        return out

    def validate(self, **kwargs) -> PromptSet:
        """Raise `PromptSetError` listing every problem; return self when there is none."""
        found = self.problems(**kwargs)
        if found:
            shown = "\n  ".join(found[:30])
            more = f"\n  … and {len(found) - 30} more" if len(found) > 30 else ""
            raise PromptSetError(f"prompt set {self.name!r} has {len(found)} problem(s):\n  {shown}{more}")
        return self

    def summary(self) -> str:
        """Counts per language × label × split, as a text table."""
        counts = Counter((p.lang, p.label, p.split) for p in self)
        splits = [s for s in SPLITS if any(k[2] == s for k in counts)] + sorted({k[2] for k in counts} - set(SPLITS))
        cols = [(label, s) for label in self.labels for s in splits]
        head = ["lang"] + [f"{label[:7]}/{s or '-'}" for label, s in cols] + ["total"]
        lines = [" ".join(f"{h:>15}" if i else f"{h:<6}" for i, h in enumerate(head))]
        for lang in self.langs:
            cells = [counts[(lang, label, s)] for label, s in cols]
            lines.append(" ".join([f"{lang:<6}"] + [f"{c:>15}" for c in cells] + [f"{sum(cells):>15}"]))
        lines.append(f"{self.name}: {len(self)} prompts, {len(set(self.ids))} distinct ids")
        return "\n".join(lines)

    # --- files ---------------------------------------------------------------------------------
    def to_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        with open(path, "w", encoding="utf-8") as f:
            for p in self:
                f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_jsonl(cls, path: str | Path, name: str | None = None) -> PromptSet:
        path = Path(path)
        prompts = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        prompts.append(Prompt(**json.loads(line)))
                    except (json.JSONDecodeError, TypeError) as err:
                        raise PromptSetError(f"{path}:{n}: not a prompt record ({err})") from None
        return cls(prompts, name or path.stem)


# --- bundled data ------------------------------------------------------------------------------------
def _data_file(*parts: str):
    return resources.files("safety_neurons").joinpath("data", *parts)


def load_prompts(langs: Iterable[str] = LANGS) -> PromptSet:
    """The bundled parallel set: 160 harmful + 160 harmless requests in each of the 8 languages."""
    prompts: list[Prompt] = []
    for lang in check_langs(langs):
        with _data_file("prompts", f"{lang}.jsonl").open(encoding="utf-8") as f:
            prompts += [Prompt(**json.loads(line)) for line in f if line.strip()]
    return PromptSet(prompts, "bundled")


def load_utility(langs: Iterable[str] = LANGS, *, limit: int | None = None) -> list[MCQuestion]:
    """The bundled four-option multiple-choice questions, 80 per language with the same ids (mc-001 …
    mc-080) in each. `limit` keeps the first `limit` of each language in id order, the same questions
    in every language (None: all 80)."""
    if limit is not None:
        limit = check_int("limit", limit, PromptSetError)
        if limit < 0:
            raise PromptSetError(f"limit must be ≥ 0 (questions per language), got {limit}")
    out = []
    for lang in check_langs(langs):
        with _data_file("utility", f"{lang}.jsonl").open(encoding="utf-8") as f:
            questions = []
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    rec["choices"] = tuple(rec["choices"])
                    questions.append(MCQuestion(**rec))
        questions.sort(key=lambda q: q.id)  # zero-padded ids: their order is the numbers' order
        out += questions if limit is None else questions[:limit]
    return out


# --- public benchmarks and user files -----------------------------------------------------------------
MULTIJAIL_REPO = ("DAMO-NLP-SG/MultiJail", "MultiJail.csv")
STRONGREJECT_REPO = ("walledai/StrongREJECT", "strongreject_dataset.csv")


def _hub_file(repo_file: tuple[str, str], what: str) -> Path:
    repo, filename = repo_file
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename, repo_type="dataset"))
    except Exception as err:  # offline, no such file, no huggingface_hub
        raise FileNotFoundError(
            f"could not fetch {what} from the hub ({type(err).__name__}). Without a hub, download "
            f"{filename} from the dataset {repo} yourself and pass its path: path='.../{filename}'"
        ) from None


def _read_table(path: Path, encoding: str = "utf-8-sig") -> list[tuple[int, dict]]:
    """(line number, record) for each row of a CSV (csv module: quoting, embedded newlines) or JSONL
    file (one JSON object a line). Malformed rows are errors naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    kind = path.suffix.lower()
    if kind not in (".csv", ".jsonl"):
        raise PromptSetError(f"{path}: unknown file type {path.suffix!r}; give a .csv or a .jsonl file")
    out: list[tuple[int, dict]] = []
    try:
        with open(path, encoding=encoding, newline="") as f:
            if kind == ".jsonl":
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise PromptSetError(f"{path}:{n}: not valid JSON ({err.msg}, column {err.colno})") from None
                    if not isinstance(rec, dict):
                        raise PromptSetError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
                    out.append((n, rec))
                return out
            reader = csv.DictReader(f, restkey="\0extra")
            try:
                for row in reader:
                    n = reader.line_num
                    if "\0extra" in row:
                        raise PromptSetError(
                            f"{path}:{n}: {len(reader.fieldnames) + len(row[chr(0) + 'extra'])} fields, the header has "
                            f'{len(reader.fieldnames)}: a text with commas must be quoted ("like, this")'
                        )
                    if any(v is None for v in row.values()):
                        raise PromptSetError(f"{path}:{n}: fewer fields than the header's {len(reader.fieldnames)}")
                    if any(row.values()):
                        out.append((n, row))
            except csv.Error as err:
                raise PromptSetError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None
    except UnicodeDecodeError as err:
        raise PromptSetError(
            f"{path}: not readable as {encoding} (byte {err.start}: {err.reason}); pass encoding=, e.g. 'cp1252'"
        ) from None
    except LookupError:
        raise PromptSetError(f"unknown encoding {encoding!r}") from None
    return out


def load_multijail(path: str | Path | None = None, *, langs: Iterable[str] | None = None) -> PromptSet:
    """MultiJail (315 harmful requests, native-speaker translations): one column per language.
    Of its languages, en, zh, vi, th and bn are ours; all its prompts land in split 'test'."""
    path = Path(path) if path else _hub_file(MULTIJAIL_REPO, "MultiJail")
    table = [row for _, row in _read_table(path)]
    if not table or "en" not in table[0]:
        raise PromptSetError(f"{path}: expected MultiJail columns (id, en, zh, vi, th, bn, …)")
    # its "id" column is the row number, not Indonesian (MultiJail has no Indonesian)
    available = [lang for lang in LANGS if lang in table[0] and lang != "id"]
    langs = check_langs(langs) if langs is not None else available
    absent = [lang for lang in langs if lang not in available]
    if absent:
        raise ValueError(f"MultiJail has no column for {absent}; it has {available}")
    prompts = []
    for n, row in enumerate(table):
        pid = f"multijail-{row.get('id') or n}"
        category = (row.get("tags") or "").split(",")[0].strip()
        for lang in langs:
            prompts.append(Prompt(pid, lang, "harmful", row[lang].strip(), category, "test"))
    return PromptSet(prompts, "multijail")


def load_strongreject(path: str | Path | None = None) -> PromptSet:
    """StrongREJECT (313 English forbidden prompts) as harmful English prompts, split 'test'."""
    path = Path(path) if path else _hub_file(STRONGREJECT_REPO, "StrongREJECT")
    table = [row for _, row in _read_table(path)]
    column = next((c for c in ("forbidden_prompt", "prompt") if table and c in table[0]), None)
    if column is None:
        raise PromptSetError(f"{path}: expected a 'forbidden_prompt' (or 'prompt') column")
    return PromptSet(
        [
            Prompt(f"strongreject-{n:03d}", "en", "harmful", row[column].strip(), row.get("category", ""), "test")
            for n, row in enumerate(table)
        ],
        "strongreject",
    )


FIELDS = ("id", "lang", "label", "text", "category", "split")


def load_custom(
    path: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
    name: str | None = None,
    encoding: str = "utf-8-sig",
) -> PromptSet:
    """A user CSV or JSONL file. `columns` maps our fields (id, lang, label, text, category, split)
    to the file's column names; `defaults` fills fields the file lacks (e.g. {"label": "harmful"}).

    Every row is checked as it is read, and any problem is a `PromptSetError` naming the file and
    line: a row with more fields than the header (unquoted commas in a CSV text), empty text, a
    language outside `LANGS`, a label other than 'harmful' / 'harmless' (exactly), a split outside
    anchor / val / test, and the same (lang, id) twice. Ids default to row-00000, row-00001, …."""
    path = as_path("path", path, PromptSetError)
    for arg, mapping in (("columns", columns), ("defaults", defaults)):
        if mapping is not None and not isinstance(mapping, Mapping):
            raise PromptSetError(f"{arg} must be a dict of field → value, got {type(mapping).__name__}")
        unknown = sorted(set(mapping or {}) - set(FIELDS))
        if unknown:
            raise PromptSetError(f"{arg}: unknown field(s) {unknown}; fields are {', '.join(FIELDS)}")
        bad = [k for k, v in (mapping or {}).items() if not isinstance(v, str)]
        if bad:
            raise PromptSetError(f"{arg}[{bad[0]!r}] must be a string, got {(mapping or {})[bad[0]]!r}")
    columns = {**{k: k for k in FIELDS}, **(columns or {})}
    defaults = dict(defaults or {})
    table = _read_table(path, encoding)
    if not table:
        raise PromptSetError(f"{path}: no rows")
    have = set().union(*(row.keys() for _, row in table))
    for required in ("text", "lang", "label"):
        if columns[required] not in have and required not in defaults:
            raise PromptSetError(
                f"{path}: no column {columns[required]!r} for field {required!r} (columns: {sorted(have)}); "
                f"map it with columns={{'{required}': ...}} or give defaults={{'{required}': ...}}"
            )
    prompts, problems, first_line = [], [], {}
    for i, (n, row) in enumerate(table):
        rec = {}
        for f, c in columns.items():
            value = row.get(c)
            rec[f] = defaults.get(f, "") if value is None or value == "" else str(value).strip()
        rec["id"] = rec["id"] or f"row-{i:05d}"
        where = f"{path}:{n}"
        if not rec["text"]:
            problems.append(f"{where}: empty text")
        if rec["lang"] not in LANGS:
            problems.append(f"{where}: unknown language {rec['lang']!r}; supported: {', '.join(LANGS)}")
        if rec["label"] not in LABELS:
            hint = " (labels are lower case)" if rec["label"].casefold() in LABELS else ""
            problems.append(f"{where}: label {rec['label']!r} is not one of {', '.join(LABELS)}{hint}")
        if rec["split"] and rec["split"] not in SPLITS:
            problems.append(f"{where}: split {rec['split']!r} is not one of {', '.join(SPLITS)} (or empty)")
        key = (rec["lang"], rec["id"])
        if key in first_line:
            problems.append(f"{where}: duplicate id {rec['id']!r} in {rec['lang']} (first on line {first_line[key]})")
        first_line.setdefault(key, n)
        prompts.append(Prompt(**rec))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PromptSetError(f"{path}: {len(problems)} problem(s):\n  {shown}{more}")
    return PromptSet(prompts, name or path.stem)
