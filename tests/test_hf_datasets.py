"""Forget/retain sets from Hugging Face `datasets`: parquet and arrow files, save_to_disk folders (splits), a
column map, every bad input's one message, a Hub id offline, and a CLI run from a parquet forget set."""
import json

import datasets
import pytest

from conftest import run_unlearn
from core.config import UnlearnConfig
from core.data import Example, load_examples
from core.errors import UnlearnError
from core.methods import get_method
from core.views import read_sets

QA = [{"question": "Who wrote Q1?", "answer": "A1."}, {"question": "Who wrote Q2?", "answer": "A2."}]
QA_EXAMPLES = [Example("A1.", "Who wrote Q1?"), Example("A2.", "Who wrote Q2?")]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def parquet(tmp_path, rows, name="set.parquet") -> str:
    path = tmp_path / name
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def saved_dict(tmp_path, **splits) -> str:
    """A DatasetDict of question/answer splits written with save_to_disk: one folder, a subfolder per split
    (built column-wise, so that an empty split keeps its columns)."""
    folder = tmp_path / "dict"
    columnwise = {name: {key: [row[key] for row in rows] for key in ("question", "answer")}
                  for name, rows in splits.items()}
    data = datasets.DatasetDict({name: datasets.Dataset.from_dict(cols) for name, cols in columnwise.items()})
    data.save_to_disk(str(folder), num_shards={name: 1 for name in splits})   # datasets cannot reread 0 shards
    return str(folder)


def message(source, columns=None) -> str:
    with pytest.raises(UnlearnError) as info:
        load_examples(source, "forget", columns)
    return str(info.value)


def test_parquet_rows_become_qa_or_raw_text_examples(tmp_path):
    assert load_examples(parquet(tmp_path, QA)) == QA_EXAMPLES
    texts = load_examples(parquet(tmp_path, [{"text": "A passage to forget.", "id": 3}], "text.parquet"))
    assert texts == [Example("A passage to forget.")] and not texts[0].is_qa


def test_arrow_file_and_a_saved_dataset_folder(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(QA).save_to_disk(str(folder))
    arrow = next(folder.glob("*.arrow"))
    assert load_examples(str(arrow)) == QA_EXAMPLES
    assert load_examples(str(folder)) == QA_EXAMPLES


def test_save_to_disk_dict_reads_train_by_default_and_a_split_after_at(tmp_path):
    folder = saved_dict(tmp_path, train=QA, test=QA[:1])
    assert load_examples(folder) == QA_EXAMPLES
    assert load_examples(folder + "@test") == QA_EXAMPLES[:1]
    assert load_examples(folder + "/test") == QA_EXAMPLES[:1]   # a split's own folder is a dataset too


def test_column_map_names_other_columns(tmp_path):
    rows = [{"instruction": q["question"], "output": q["answer"], "question": "not this one"} for q in QA]
    assert load_examples(parquet(tmp_path, rows), "forget", "question=instruction, answer=output") == QA_EXAMPLES
    corpus = parquet(tmp_path, [{"content": "Raw words."}], "corpus.parquet")
    assert load_examples(corpus, "retain", "text=content") == [Example("Raw words.")]


@pytest.mark.parametrize("columns,fragments", [
    (None, ["has columns ['a', 'q'] but needs question/answer", "--forget-columns question=COLUMN,answer=COLUMN"]),
    ("question=q,answer=missing", ["has columns ['a', 'q'] but needs q/missing", "given to --forget-columns"]),
    ("question=q", ["must name question and answer, or text alone"]),
    ("question:q,answer=a", ["'question:q' is not NAME=COLUMN"]),
])
def test_missing_or_misnamed_columns(tmp_path, columns, fragments):
    text = message(parquet(tmp_path, [{"q": "Q?", "a": "A."}]), columns)
    assert all(fragment in text for fragment in fragments), text
    assert "\n  fix: " in text


def test_split_problems_name_the_splits_that_exist(tmp_path):
    folder = saved_dict(tmp_path, validation=QA, test=[])
    assert "has no split 'train'; its splits: validation, test" in message(folder)
    assert f"e.g. {folder}@validation" in message(folder)
    assert "holds no rows" in message(folder + "@test")
    empty = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({"question": [], "answer": []}).to_parquet(str(empty))
    assert "holds no rows" in message(str(empty))


def test_not_a_dataset_and_unreadable_files(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    assert "is a directory, not a file nor a dataset saved with save_to_disk" in message(str(tmp_path / "plain"))
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet at all")
    assert "is not a readable .parquet dataset" in message(str(bad))
    bad_arrow = tmp_path / "bad.arrow"
    bad_arrow.write_bytes(b"\x00" * 64)
    assert "is not a readable .arrow dataset" in message(str(bad_arrow))
    assert "is a single dataset, without a split 'test'" in message(parquet(tmp_path, QA) + "@test")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "dataset_dict.json").write_text("{not json")
    assert "is not a readable saved dataset" in message(str(damaged))


def test_values_that_are_not_text(tmp_path):
    assert "'answer' must be text, not int" in message(parquet(tmp_path, [{"question": "Q?", "answer": 3}]))
    assert "has an empty 'answer'" in message(parquet(tmp_path, [{"question": "Q?", "answer": "  "}], "blank.parquet"))


def test_hub_ids_are_checked_and_never_taken_for_paths(tmp_path):
    assert "is not a Hub dataset id" in message("hf:just-a-name")
    config = UnlearnConfig(forget="hf:cais/wmdp:wmdp-bio@test", retain=str(tmp_path / "r.jsonl"))
    paths = config.absolute_paths()
    assert paths["forget"] == "hf:cais/wmdp:wmdp-bio@test" and paths["retain"] == str(tmp_path / "r.jsonl")


def test_retain_and_normal_take_their_own_column_maps(tmp_path):
    forget = parquet(tmp_path, QA, "forget.parquet")
    retain = parquet(tmp_path, [{"prompt_text": "2+2?", "reply": "4."}], "retain.parquet")
    normal = parquet(tmp_path, [{"body": "Ordinary text."}], "normal.parquet")
    config = UnlearnConfig(method="yao", forget=forget, retain=retain, normal=normal,
                           retain_columns="question=prompt_text,answer=reply", normal_columns="text=body")
    raw = read_sets(config, get_method("yao"))
    assert raw.forget == QA_EXAMPLES
    assert raw.retain == [Example("4.", "2+2?")] and raw.normal == [Example("Ordinary text.")]


def test_hub_id_offline_gives_one_message_naming_save_to_disk(tmp_path, tiny_model_dir, qa_files):
    result = run_unlearn("train", "--model", tiny_model_dir, "--forget", "hf:cais/wmdp:wmdp-bio@test",
                         "--retain", qa_files["retain"], "--out", tmp_path / "run", "--max-steps", 1, env=OFFLINE)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == ("error: cannot reach the Hugging Face Hub for the forget set hf:cais/wmdp:wmdp-bio@test "
                        "(offline, and it is not in the local datasets cache)")
    assert lines[1].startswith("  fix: on a machine with internet") and ".save_to_disk('wmdp')" in lines[1]
    assert "load_dataset('cais/wmdp', 'wmdp-bio', split='test')" in lines[1]


def train_from_parquet(tmp_path, tiny_model_dir, qa_files, steps: int):
    """`unlearn train` on the forget QA as a parquet file with other column names, mapped by --forget-columns:
    (the process, the forget rows, the parquet file, the run folder)."""
    rows = [json.loads(line) for line in qa_files["forget"].read_text().splitlines()]
    forget = parquet(tmp_path, [{"prompt_text": r["question"], "target": r["answer"]} for r in rows])
    out = tmp_path / "run"
    result = run_unlearn("train", "--model", tiny_model_dir, "--method", "npo_rt", "--forget", forget,
                         "--forget-columns", "question=prompt_text,answer=target", "--retain", qa_files["retain"],
                         "--out", out, "--max-steps", steps, "--lr", 1e-3, "--device", "cpu", env=OFFLINE)
    assert result.returncode == 0, result.stderr
    return result, rows, forget, out


def test_train_from_a_parquet_forget_set_with_a_column_map(tmp_path, tiny_model_dir, qa_files):
    result, rows, forget, out = train_from_parquet(tmp_path, tiny_model_dir, qa_files, 2)
    assert "Unlearning finished: 2 steps" in result.stdout and "forget: 8 examples" in result.stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["forget"] == forget and saved["forget_columns"] == "question=prompt_text,answer=target"
    # what a resume reads back: the same settings find the same examples
    again = UnlearnConfig.from_dict({k: v for k, v in saved.items() if k in UnlearnConfig.__dataclass_fields__})
    assert read_sets(again, get_method("npo_rt")).forget == [Example(r["answer"], r["question"]) for r in rows]


def test_eval_audit_and_export_read_the_run_s_set_with_its_column_map(tmp_path, tiny_model_dir, qa_files):
    """The column map reaches every command that reads the run's data: eval, the audit (with its progress bar)
    and export's parity checks would otherwise fail on columns they cannot find."""
    _, _, _, out = train_from_parquet(tmp_path, tiny_model_dir, qa_files, 1)
    evaluated = run_unlearn("eval", out, "--suite", "quick", "--out", tmp_path / "eval", "--max-samples", 4,
                            "--max-new-tokens", 4, "--device", "cpu", "--json", env=OFFLINE)
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(evaluated.stdout)   # --json: nothing but the summary on stdout
    assert summary["after"]["forget"]["nll"] > 0 and summary["scored_on"]["examples"]["forget"] == 4
    audited = run_unlearn("audit", out, "--out", tmp_path / "audit", "--attacks", "relearn", "--max-samples", 4,
                          "--max-new-tokens", 4, "--relearn-steps", 1, "--relearn-lr", "x1,x3", "--device", "cpu",
                          env=OFFLINE)
    assert audited.returncode == 0, audited.stderr
    assert "| relearn |" in audited.stdout
    assert "audit: 100%" in audited.stderr and "2/2" in audited.stderr   # one unit per learning rate
    exported = run_unlearn("export", out, "--out", tmp_path / "bundle", "--formats", "hf", "--parity-examples", 2,
                           "--json", env=OFFLINE)
    assert exported.returncode == 0, exported.stderr
    assert "forget_nll" in json.loads(exported.stdout)["metrics"]["hf"]
