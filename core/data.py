"""Forget / retain / normal sets: read files into examples, tokenise them, and batch them.

Formats: `.txt` (passages separated by blank lines), `.jsonl` / `.json` (JSON Lines or a JSON list of
objects), `.csv`; records carry question/answer, prompt/completion or text fields. `tofu:SPLIT` names a
split of the TOFU benchmark bundled in `assets/tofu/`.
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
from .losses import IGNORE_INDEX

# Accepted record layouts, first match wins: (prompt field, answer field); None = raw text.
FIELD_PAIRS = (("question", "answer"), ("prompt", "completion"), ("prompt", "response"), (None, "text"))
SUFFIXES = (".txt", ".jsonl", ".json", ".csv")
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

def load_examples(source: str, role: str = "forget") -> list[Example]:
    """Read a file or a `tofu:` split; every problem becomes one UnlearnError naming the fix."""
    if source.startswith("tofu:"):
        from .tofu import load_records

        examples = [Example(answer=r["answer"], prompt=r["question"]) for r in load_records(source.removeprefix("tofu:"))]
    else:
        examples = _parse(Path(source), _read_text(Path(source), role), role)
    require(len(examples) > 0, f"the {role} set {source} holds no examples",
            "add at least one passage or question/answer record")
    return examples


def _read_text(path: Path, role: str) -> str:
    require(path.exists(), f"{role} file {path} does not exist", "check the path and the file name")
    require(path.is_file(), f"{role} path {path} is a directory, not a file", "name a file inside it")
    require(path.suffix.lower() in SUFFIXES, f"{role} file {path} has an unsupported type '{path.suffix}'",
            f"use one of {', '.join(SUFFIXES)}")
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


def _parse(path: Path, text: str, role: str) -> list[Example]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [Example(answer=p.strip()) for p in _split_passages(text)]
    if suffix == ".csv":
        records = _read_csv(path, text, role)
    else:
        records = _read_json(path, text, role)
    return [_record_to_example(r, f"{role} file {path}, record {i + 1}") for i, r in enumerate(records)]


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


def _record_to_example(record, where: str) -> Example:
    require(isinstance(record, dict), f"{where} is not an object with named fields",
            'write records like {"question": "...", "answer": "..."} or {"text": "..."}')
    for prompt_key, answer_key in FIELD_PAIRS:
        if answer_key in record and (prompt_key is None or prompt_key in record):
            answer = record[answer_key]
            prompt = None if prompt_key is None else record[prompt_key]
            require(isinstance(answer, str) and answer.strip() != "", f"{where} has an empty '{answer_key}'",
                    "fill it in or remove the record")
            require(prompt is None or isinstance(prompt, str), f"{where}: '{prompt_key}' must be text")
            return Example(answer=answer, prompt=prompt)
    expected = " or ".join("/".join(k for k in pair if k) for pair in FIELD_PAIRS)
    raise UnlearnError(f"{where} has columns {sorted(record)} but needs {expected}",
                       "rename the columns, e.g. question and answer")


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
