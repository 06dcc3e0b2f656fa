"""Readers for every format, TOFU splits, answer-only labels, truncation reporting, and bad files."""
import json

import pytest

from core.data import (Example, UnlearningDataset, encode_example, encode_examples, load_examples, make_collate,
                       pad_batch)
from core.errors import UnlearnError
from core.losses import IGNORE_INDEX
from core.tofu import load_records


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def test_txt_passages_are_split_on_blank_lines(tmp_path):
    path = write(tmp_path, "f.txt", "First passage\nstill first.\n\n\nSecond passage.\n\n")
    examples = load_examples(path)
    assert examples == [Example(answer="First passage\nstill first."), Example(answer="Second passage.")]
    assert not examples[0].is_qa


@pytest.mark.parametrize("fields", [("question", "answer"), ("prompt", "completion")])
def test_jsonl_qa_fields(tmp_path, fields):
    q, a = fields
    path = write(tmp_path, "f.jsonl", json.dumps({q: "Q1?", a: "A1."}) + "\n\n" + json.dumps({q: "Q2?", a: "A2."}))
    assert load_examples(path) == [Example("A1.", "Q1?"), Example("A2.", "Q2?")]


def test_json_list_and_tofu_style_json_lines(tmp_path):
    as_list = write(tmp_path, "list.json", json.dumps([{"text": "alpha"}, {"text": "beta"}]))
    as_lines = write(tmp_path, "lines.json", '{"question": "q", "answer": "a"}\n{"question": "r", "answer": "b"}\n')
    assert [e.answer for e in load_examples(as_list)] == ["alpha", "beta"]
    assert [e.prompt for e in load_examples(as_lines)] == ["q", "r"]


def test_csv_with_quoted_commas(tmp_path):
    path = write(tmp_path, "f.csv", 'question,answer\n"Who, exactly?","Her, of course."\n')
    assert load_examples(path) == [Example("Her, of course.", "Who, exactly?")]


def test_tofu_splits_are_slices_of_full():
    forget01 = load_records("forget01")
    assert len(forget01) == 40 and len(load_records("retain99")) == 3960
    assert forget01[0]["answer"].endswith("Basil Mahfouz Al-Kuwaiti.")
    assert load_records("full")[-40:] == forget01
    assert len(load_examples("tofu:forget05")) == 200
    assert "perturbed_answer" in load_records("forget01_perturbed")[0]


@pytest.mark.parametrize("name,content,mode,message", [
    ("empty.txt", "", "w", "is empty"),
    ("blank.txt", "  \n\n ", "w", "is empty"),
    ("bin.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00", "wb", "is binary"),
    ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "wb", "not UTF-8"),
    ("bad.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q2", ', "w", "line 2 is not valid JSON"),
    ("bad.json", '[{"text": "a"},', "w", "not valid JSON"),
    ("cols.jsonl", '{"q": "x", "a": "y"}\n', "w", "needs question/answer"),
    ("cols.csv", "foo,bar\n1,2\n", "w", "needs question/answer"),
    ("empty_answer.jsonl", '{"question": "q", "answer": "  "}\n', "w", "empty 'answer'"),
    ("number_answer.jsonl", '{"question": "q", "answer": 5}\n', "w", "'answer' must be text, not int"),
    ("scalar.jsonl", '"just a string"\n', "w", "not an object"),
    ("bad.csv", 'question,answer\n"unterminated,x\n', "w", "not valid CSV"),
    ("f.pdf", "hello", "w", "unsupported type"),
])
def test_bad_files_give_one_clear_message(tmp_path, name, content, mode, message):
    path = write(tmp_path, name, content, mode)
    with pytest.raises(UnlearnError) as info:
        load_examples(path, "forget")
    assert message in str(info.value)
    assert "fix:" in str(info.value)


def test_missing_file_and_unknown_tofu_split(tmp_path):
    with pytest.raises(UnlearnError, match="does not exist"):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UnlearnError, match="unknown TOFU split"):
        load_examples("tofu:forget_everything")
    with pytest.raises(UnlearnError, match="is a directory"):
        load_examples(str(tmp_path))


def test_column_map_serves_text_formats_too(tmp_path):
    path = write(tmp_path, "f.jsonl", json.dumps({"q": "Q?", "a": "A."}) + "\n")
    assert load_examples(path, "forget", "question=q,answer=a") == [Example("A.", "Q?")]
    csv_path = write(tmp_path, "f.csv", "title,body\nT,Some text.\n")
    assert load_examples(csv_path, "retain", "text=body") == [Example("Some text.")]


def test_columns_make_no_sense_for_tofu_or_plain_text(tmp_path):
    with pytest.raises(UnlearnError, match="whose columns are fixed"):
        load_examples("tofu:forget01", "forget", "question=q,answer=a")
    with pytest.raises(UnlearnError, match="is plain text, without columns"):
        load_examples(write(tmp_path, "f.txt", "A passage."), "forget", "text=body")


def test_empty_json_list_is_an_empty_set(tmp_path):
    with pytest.raises(UnlearnError, match="holds no examples"):
        load_examples(write(tmp_path, "e.json", "[]"))


def test_qa_uses_chat_template_and_labels_only_the_answer(tokenizer):
    encoded, truncated = encode_example(tokenizer, Example("Paris.", "Capital of France?"), 256)
    assert not truncated
    n_prompt = sum(1 for label in encoded.labels if label == IGNORE_INDEX)
    prompt = tokenizer.decode(encoded.input_ids[:n_prompt])
    answer = tokenizer.decode(encoded.input_ids[n_prompt:])
    assert prompt.endswith("<|im_start|>assistant\n") and "Capital of France?" in prompt
    assert answer == "Paris.<|im_end|>"      # the answer and one EOS are the only labels
    assert encoded.labels[n_prompt:] == encoded.input_ids[n_prompt:]


def test_raw_text_labels_every_token(tokenizer):
    encoded, _ = encode_example(tokenizer, Example("Some raw passage to forget."), 256)
    assert encoded.labels == encoded.input_ids


def test_truncation_is_counted_and_unfit_examples_dropped(tokenizer):
    long_answer = Example(" ".join(["word"] * 300), "Short question?")
    long_prompt = Example("Yes.", " ".join(["word"] * 300))
    short = Example("Fine.", "Short?")
    result = encode_examples(tokenizer, [long_answer, long_prompt, short], 64, "forget")
    assert (result.truncated, result.dropped, len(result.items)) == (2, 1, 2)
    assert all(len(item.input_ids) <= 64 for item in result.items)
    assert result.kept == [0, 2]
    assert "2 truncated to 64 tokens" in result.describe() and "1 dropped" in result.describe()


def test_pad_batch_right_pads_and_masks(tokenizer):
    items = encode_examples(tokenizer, [Example("A.", "Q?"), Example("A much longer answer here.", "Q?")],
                            128, "forget").items
    batch = pad_batch(items, pad_id=tokenizer.pad_token_id)
    short = len(items[0].input_ids)
    assert batch["attention_mask"][0, short:].sum() == 0 and batch["attention_mask"][1].all()
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()


def test_retain_pairing_is_seeded_per_epoch_and_covers_the_pool():
    dataset = UnlearningDataset(aligned={"forget": list(range(4))}, sampled={"retain": list(range(100, 108))}, seed=3)
    first = [dataset[i]["retain"] for i in range(4)]
    assert first == [dataset[i]["retain"] for i in range(4)]      # deterministic within an epoch
    dataset.set_epoch(1)
    second = [dataset[i]["retain"] for i in range(4)]
    assert first != second and set(first + second) <= set(range(100, 108))
    again = UnlearningDataset(aligned={"forget": list(range(4))}, sampled={"retain": list(range(100, 108))}, seed=3)
    again.set_epoch(1)
    assert [again[i]["retain"] for i in range(4)] == second         # a resumed run sees the same pairs


def test_collate_attaches_cached_reference_by_example_index(tokenizer):
    import torch

    items = encode_examples(tokenizer, [Example(f"A{i}.", f"Q{i}?") for i in range(3)], 64, "forget").items
    dataset = UnlearningDataset(aligned={"forget": items}, sampled={})
    collate = make_collate(tokenizer.pad_token_id, {"forget": torch.tensor([10.0, 11.0, 12.0])})
    batch = collate([dataset[2], dataset[0]])
    assert batch["forget"]["ref_nll"].tolist() == [12.0, 10.0]
