"""Forget / retain / normal sets: read files into examples, tokenise them, and batch them.

Formats: `.txt` (passages separated by blank lines), `.jsonl` / `.json` (JSON Lines or a JSON list of
objects), `.csv`, and through Hugging Face `datasets` (core/hf_datasets.py) `.parquet` / `.arrow` files,
`save_to_disk` folders and Hub ids `hf:ORG/NAME[:CONFIG][@SPLIT]`; records carry question/answer,
prompt/completion, prompt/response or text fields, or the columns a `--forget-columns`-style map names.
`tofu:SPLIT` names a split of the TOFU benchmark bundled in `assets/tofu/`.
"""
from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UnlearnError, require
from .hf_datasets import DATASET_SUFFIXES, Table, is_dataset_source, read_table
from .losses import IGNORE_INDEX

# Accepted record layouts, first match wins: (prompt field, answer field); None = raw text.
FIELD_PAIRS = (("question", "answer"), ("prompt", "completion"), ("prompt", "response"), (None, "text"))
SUFFIXES = (".txt", ".jsonl", ".json", ".csv")
COLUMN_ROLES = ("forget", "retain", "normal")   # the sets whose columns a --ROLE-columns flag maps
BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Example:
    """A question/answer pair (loss on the answer) or, with prompt None, raw text (loss on all of it)."""
    answer: str
    prompt: str | None = None

    @property
    def is_qa(self) -> bool:
        return self.prompt is not None


# ---------------------------------------------------------------- reading

def column_map(config: dict, role: str, source: str | None = None, columns: str | None = None) -> str | None:
    """The column map to read a run's `role` set with: `columns` if given, else the one its config recorded
    (--ROLE-columns); a `source` other than the run's own set gets `columns` only."""
    if source and source != config.get(role):
        return columns
    return columns or config.get(f"{role}_columns")


def run_examples(config: dict, role: str, source: str | None = None, columns: str | None = None) -> list[Example]:
    """A run's `role` set (or `source` instead), read with its column map (column_map)."""
    return load_examples(source or config[role], role, column_map(config, role, source, columns))


def load_examples(source: str, role: str = "forget", columns: str | None = None) -> list[Example]:
    """Read a file, a dataset or a `tofu:` split; every problem becomes one UnlearnError naming the fix.
    `columns` ("question=COL,answer=COL" or "text=COL") names the columns when they are not the usual ones."""
    pairs = column_pairs(columns, role)
    if source.startswith("tofu:"):
        from .tofu import load_records

        require(columns is None, f"the {role} set {source} is a TOFU split, whose columns are fixed",
                f"drop --{role}-columns")
        examples = [Example(answer=r["answer"], prompt=r["question"]) for r in load_records(source.removeprefix("tofu:"))]
    elif is_dataset_source(source):
        examples = _table_examples(read_table(source, role), pairs, f"{role} set {source}", role)
    else:
        examples = _parse(Path(source), _read_text(Path(source), role), role, pairs)
    require(len(examples) > 0, f"the {role} set {source} holds no examples",
            "add at least one passage or question/answer record")
    return examples


def _read_text(path: Path, role: str) -> str:
    require(path.exists(), f"{role} file {path} does not exist", "check the path and the file name")
    require(path.is_file(), f"{role} path {path} is a directory, not a file", "name a file inside it")
    require(path.suffix.lower() in SUFFIXES, f"{role} file {path} has an unsupported type '{path.suffix}'",
            f"use one of {', '.join(SUFFIXES + DATASET_SUFFIXES)}, a save_to_disk folder or hf:ORG/NAME")
    raw = path.read_bytes()
    require(b"\x00" not in raw[:BINARY_SNIFF_BYTES], f"{role} file {path} is binary, not text",
            "give a UTF-8 text file (.txt, .jsonl, .json or .csv)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnlearnError(f"{role} file {path} is not UTF-8 text (undecodable byte at offset {exc.start})",
                           "re-save the file with UTF-8 encoding") from None
    require(text.strip() != "", f"{role} file {path} is empty", "add at least one example to it")
    return text


def _parse(path: Path, text: str, role: str, pairs: tuple = FIELD_PAIRS) -> list[Example]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        require(pairs == FIELD_PAIRS, f"{role} file {path} is plain text, without columns", f"drop --{role}-columns")
        return [Example(answer=p.strip()) for p in _split_passages(text)]
    if suffix == ".csv":
        records = _read_csv(path, text, role)
    else:
        records = _read_json(path, text, role)
    return [_record_to_example(r, f"{role} file {path}, record {i + 1}", pairs, role) for i, r in enumerate(records)]


def _split_passages(text: str) -> list[str]:
    passages, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            passages.append("\n".join(current))
            current = []
    if current:
        passages.append("\n".join(current))
    return passages


def _read_json(path: Path, text: str, role: str) -> list:
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{role} file {path} is not valid JSON: {exc.msg} at line {exc.lineno}",
                               "fix the JSON syntax at that line") from None
        require(isinstance(data, list), f"{role} file {path} must hold a list of records")
        return data
    # JSON Lines: also what TOFU ships under a .json extension.
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{role} file {path} line {lineno} is not valid JSON: {exc.msg}",
                               "write one JSON object per line (JSON Lines) or one JSON list") from None
    return records


def _read_csv(path: Path, text: str, role: str) -> list[dict]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        rows = list(reader)
    except csv.Error as exc:
        raise UnlearnError(f"{role} file {path} is not valid CSV: {exc}",
                           "quote fields that contain commas, quotes or line breaks") from None
    require(reader.fieldnames is not None, f"{role} file {path} has no header row",
            "put column names (question,answer or text) on the first line")
    return rows


def _record_to_example(record, where: str, pairs: tuple = FIELD_PAIRS, role: str = "forget") -> Example:
    require(isinstance(record, dict), f"{where} is not an object with named fields",
            'write records like {"question": "...", "answer": "..."} or {"text": "..."}')
    return _example(record, _matching_pair(record, pairs, where, role), where)


def _table_examples(table: Table, pairs: tuple, where: str, role: str) -> list[Example]:
    """A dataset's rows as examples: its columns are checked once, then every row is read the same way."""
    pair = _matching_pair(table.columns, pairs, where, role)
    return [_example(row, pair, f"{where}, row {i + 1}") for i, row in enumerate(table.rows)]


def _matching_pair(columns, pairs: tuple, where: str, role: str) -> tuple[str | None, str]:
    """The first (prompt, answer) column pair present in `columns`, or one error naming what is missing."""
    for prompt_key, answer_key in pairs:
        if answer_key in columns and (prompt_key is None or prompt_key in columns):
            return prompt_key, answer_key
    expected = " or ".join("/".join(k for k in pair if k) for pair in pairs)
    if pairs != FIELD_PAIRS:
        fix = f"fix the column names given to --{role}-columns: they must be among the ones listed"
    elif role in COLUMN_ROLES:
        fix = (f"rename the columns (e.g. question and answer) or name yours with "
               f"--{role}-columns question=COLUMN,answer=COLUMN")
    else:
        fix = "rename the columns, e.g. question and answer"
    raise UnlearnError(f"{where} has columns {sorted(columns)} but needs {expected}", fix)


def _example(record: dict, pair: tuple[str | None, str], where: str) -> Example:
    prompt_key, answer_key = pair
    answer = record[answer_key]
    prompt = None if prompt_key is None else record[prompt_key]
    require(answer is not None and (not isinstance(answer, str) or answer.strip() != ""),
            f"{where} has an empty '{answer_key}'", "fill it in or remove the record")
    require(isinstance(answer, str), f"{where}: '{answer_key}' must be text, not {type(answer).__name__}",
            "name a text column as the answer")
    require(prompt is None or isinstance(prompt, str), f"{where}: '{prompt_key}' must be text",
            "name a text column as the question")
    return Example(answer=answer, prompt=prompt)


def column_pairs(columns: str | None, role: str) -> tuple:
    """FIELD_PAIRS, or the one pair a column map names: "question=COL,answer=COL" or "text=COL"."""
    if not columns:
        return FIELD_PAIRS
    flag, example = f"--{role}-columns", "question=prompt,answer=response"
    mapping = {}
    for part in columns.split(","):
        key, equals, column = (piece.strip() for piece in part.partition("="))
        require(bool(equals and key and column), f"{flag} {columns!r}: '{part.strip()}' is not NAME=COLUMN",
                f"write for example {flag} {example}")
        mapping[key] = column
    require(set(mapping) in ({"question", "answer"}, {"text"}),
            f"{flag} {columns!r} must name question and answer, or text alone",
            f"write for example {flag} {example} (or text=content for raw text)")
    return ((mapping.get("question"), mapping.get("answer") or mapping["text"]),)


# ---------------------------------------------------------------- tokenising

@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


@dataclass
class EncodedSet:
    """Tokenised examples plus what truncation did to them (reported, never silent)."""
    role: str
    items: list[Encoded]
    kept: list[int] = field(default_factory=list)   # source index of each item
    truncated: int = 0
    dropped: int = 0
    max_length: int = 0

    def report(self) -> dict:
        return {"examples": len(self.items), "truncated": self.truncated, "dropped": self.dropped,
                "max_length": self.max_length}

    def describe(self) -> str:
        text = f"{self.role}: {len(self.items)} examples"
        if self.truncated:
            text += f", {self.truncated} truncated to {self.max_length} tokens"
        if self.dropped:
            text += f", {self.dropped} dropped (prompt alone fills max_length)"
        return text


def prompt_text(tokenizer, question: str) -> str:
    """The text a model sees before its answer: the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False)
    return f"Question: {question}\nAnswer:"


def encode_example(tokenizer, example: Example, max_length: int) -> tuple[Encoded | None, bool]:
    """Token ids and labels (IGNORE_INDEX on the prompt); returns (None, True) if nothing supervised is left."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if example.is_qa:
        prefix = prompt_text(tokenizer, example.prompt)
        prompt_ids = tokenizer(prefix, add_special_tokens=not tokenizer.chat_template)["input_ids"]
        sep = "" if tokenizer.chat_template else " "
        answer_ids = tokenizer(sep + example.answer, add_special_tokens=False)["input_ids"] + eos
    else:
        prompt_ids = []
        answer_ids = tokenizer(example.answer)["input_ids"] + eos
    ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    supervised = sum(1 for i, label in enumerate(labels) if label != IGNORE_INDEX and i > 0)
    if supervised == 0:
        return None, truncated
    return Encoded(ids, labels), truncated


def encode_examples(tokenizer, examples: list[Example], max_length: int, role: str) -> EncodedSet:
    result = EncodedSet(role=role, items=[], max_length=max_length)
    for index, example in enumerate(examples):
        encoded, truncated = encode_example(tokenizer, example, max_length)
        result.truncated += int(truncated)
        if encoded is None:
            result.dropped += 1
        else:
            result.items.append(encoded)
            result.kept.append(index)
    require(len(result.items) > 0, f"no {role} example fits in max_length={max_length} tokens",
            "raise --max-length or shorten the prompts")
    return result


def pad_batch(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item: per-sequence NLL is then independent of the batch it is in."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ---------------------------------------------------------------- training pairs

@dataclass
class UnlearningDataset(torch.utils.data.Dataset):
    """Item i = forget example i, its aligned views (idk answer, mismatch answers) and a retain/normal
    example chosen by a seeded per-epoch permutation, so a resumed run sees exactly the same pairs."""
    aligned: dict[str, list]                 # view -> one Encoded (or list of Encoded) per forget example
    sampled: dict[str, list[Encoded]]        # view -> pool drawn from ("retain", "normal")
    seed: int = 0
    reference_nll: dict[str, torch.Tensor] = field(default_factory=dict)  # view -> [N] cached NLL_ref
    epoch: int = 0
    _orders: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.aligned["forget"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pick(self, pool: list, view: str, index: int) -> int:
        """Which example of a sampled view's pool goes with forget example `index` this epoch."""
        key = (view, self.epoch)
        if key not in self._orders:
            order = list(range(len(pool)))
            random.Random(f"{self.seed}:{view}:{self.epoch}").shuffle(order)
            self._orders[key] = order
        return self._orders[key][index % len(pool)]

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "sampled_index": {}}
        item.update({view: values[index] for view, values in self.aligned.items()})
        for view, pool in self.sampled.items():
            item["sampled_index"][view] = self._pick(pool, view, index)
            item[view] = pool[item["sampled_index"][view]]
        return item


def make_collate(pad_id: int, reference_nll: dict[str, torch.Tensor]):
    """Batch items view by view; lists of sequences (mismatch answers) are flattened."""
    def collate(items: list[dict]) -> dict:
        index = torch.tensor([item["index"] for item in items])
        batch = {"index": index}
        for view in items[0]:
            if view in ("index", "sampled_index"):
                continue
            values = [item[view] for item in items]
            if isinstance(values[0], list):
                values = [seq for group in values for seq in group]
            batch[view] = pad_batch(values, pad_id)
        for view, cache in reference_nll.items():   # a sampled view (retain) is looked up by its own index
            sampled = view in items[0]["sampled_index"]
            rows = torch.tensor([item["sampled_index"][view] for item in items]) if sampled else index
            batch[view]["ref_nll"] = cache[rows]
        return batch
    return collate


def mismatch_answers(forget: list[Example], normal: list[Example], k: int, seed: int) -> list[list[Example]]:
    """Yao et al.'s random-mismatch targets: k random normal answers after each forget prompt."""
    rng = random.Random(seed)
    answers = [ex.answer for ex in normal]
    return [[Example(answer=rng.choice(answers), prompt=ex.prompt) for _ in range(k)] for ex in forget]


def idk_answers(forget: list[Example], refusals: list[str], seed: int) -> list[Example]:
    """IdkDPO's preferred answers: each forget question answered by a random "I don't know" line."""
    rng = random.Random(seed)
    return [Example(answer=rng.choice(refusals), prompt=ex.prompt) for ex in forget]
