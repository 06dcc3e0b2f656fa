"""The muse suite (VerbMem, KnowMem, PrivLeak) on a tiny model that memorised a text, from plain files and
from MUSE's own data layout; its windows and ROUGE-L F1 by hand; bad input."""
from __future__ import annotations

import json

import pytest

from conftest import quiet
from core.cli import main
from core.config import UnlearnConfig
from core.evaluation.suites.muse import windows
from core.evaluation.text_metrics import rouge_l_f1
from core.trainer import train

SMALL = ["--prefix-tokens", "6", "--continuation-tokens", "10", "--max-samples", "8", "--max-new-tokens", "12",
         "--batch-size", "4", "--device", "cpu", "--dtype", "float32"]
BOOK = ("Zorblat Quenfeather kept seven brass keys in a walnut box beside the window of the lighthouse. "
        "Every night the keeper counted them twice before the lamp was lit and the gulls fell silent.")
OTHER = "The river town sold apples and copper pots to travellers who came down from the northern hills in spring."
UNSEEN = "A glassmaker in the valley blew green bottles for the wine harvest and sold them by the dozen."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("muse")
    files = {"forget": root / "book.txt", "retain": root / "other.txt", "holdout": root / "unseen.txt",
             "qa": root / "qa.jsonl"}
    files["forget"].write_text(f"{BOOK}\n\n{BOOK}\n")
    files["retain"].write_text(f"{OTHER}\n\n{OTHER}\n")
    files["holdout"].write_text(f"{UNSEEN}\n\n{UNSEEN}\n")
    files["qa"].write_text(json.dumps({"question": "How many brass keys did Zorblat keep?", "answer": "seven"}) + "\n")
    return files


@pytest.fixture(scope="module")
def memorised(tmp_path_factory, tiny_model_dir, corpus):
    """The tiny model fine-tuned on the book until it recites it."""
    out = tmp_path_factory.mktemp("memorised") / "run"
    train(UnlearnConfig(model=str(tiny_model_dir), method="sft", forget=str(corpus["forget"]), out=str(out),
                        max_steps=200, batch_size=2, lr=1e-2, device="cpu", save_steps=0, eval_examples=0), **quiet())
    return out / "model"


def test_windows_and_rouge_l_f1_by_hand(tokenizer, corpus):
    ids = tokenizer(BOOK, add_special_tokens=False)["input_ids"]
    pairs = windows(str(corpus["forget"]), "forget", tokenizer, 6, 10)
    per_text = len(ids) // 16
    assert len(pairs) == 2 * per_text                       # two copies of the text, whole windows only
    assert pairs[0][0] == ids[:6] and pairs[0][1] == tokenizer.decode(ids[6:16])
    assert pairs[1][0] == ids[16:22]
    # ROUGE-L F1: LCS "the cat sat" (3) of 4 generated and 5 reference words: P 3/4, R 3/5 -> F1 2/3
    assert rouge_l_f1(["the cat sat down"], ["the small cat sat still"])[0] == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_verbmem_knowmem_and_mia_of_a_memorised_text(memorised, tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(memorised), "--suite", "muse", "--forget", str(corpus["forget"]), "--retain",
                 str(corpus["retain"]), "--holdout", str(corpus["holdout"]), "--qa", str(corpus["qa"]),
                 "--original", str(tiny_model_dir), "--attacks", "loss,min_k", "--out", str(out), *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    after, before = summary["after"], summary["before"]
    assert after["verbmem_forget"] > before["verbmem_forget"] + 0.4       # it recites much of the book it learned
    assert after["verbmem_retain"] < after["verbmem_forget"]
    assert set(after["mia"]) == {"loss", "min_k"} and after["mia"]["loss"] == 1.0   # the book is recognised
    assert 0 <= after["knowmem_forget"] <= 1
    log = json.loads((out / "muse_log.json").read_text())
    assert len(log["after"]["verbmem_forget"]["rougeL_f1"]) == summary["sets"]["verbmem_forget"]
    assert "VerbMem forget" in (out / "summary.md").read_text() and "VerbMem forget" in capsys.readouterr().out
    # PrivLeak against a retain model's earlier muse evaluation (its AUCs written here: 0.5 and 0.6)
    retain_eval = tmp_path / "retain-eval"
    retain_eval.mkdir()
    (retain_eval / "summary.json").write_text(json.dumps({"suite": "muse", "after": {"mia": {"loss": 0.5,
                                                                                           "min_k": 0.6}}}))
    again = tmp_path / "eval2"
    assert main(["eval", str(memorised), "--suite", "muse", "--forget", str(corpus["forget"]), "--holdout",
                 str(corpus["holdout"]), "--retain-logs", str(retain_eval), "--attacks", "loss,min_k", "--out",
                 str(again), *SMALL]) == 0
    leak = json.loads((again / "summary.json").read_text())
    auc = leak["after"]["mia"]
    assert leak["privleak"]["loss"] == pytest.approx(((1 - auc["loss"]) - 0.5) / 0.5 * 100)
    assert leak["privleak"]["min_k"] == pytest.approx(((1 - auc["min_k"]) - 0.4) / 0.4 * 100)


def test_muse_data_layout(memorised, corpus, tokenizer, tmp_path):
    root = tmp_path / "news"
    for folder in ("verbmem", "knowmem", "privleak", "raw"):
        (root / folder).mkdir(parents=True)
    ids = tokenizer(BOOK, add_special_tokens=False)["input_ids"]
    (root / "verbmem" / "forget.json").write_text(json.dumps(
        [{"prompt": tokenizer.decode(ids[:6]), "gt": tokenizer.decode(ids[6:16])}]))
    (root / "knowmem" / "forget_qa.json").write_text(json.dumps([{"question": "Keys?", "answer": "seven"}]))
    (root / "privleak" / "forget.json").write_text(json.dumps([BOOK]))
    (root / "privleak" / "holdout.json").write_text(json.dumps([UNSEEN]))
    out = tmp_path / "eval"
    assert main(["eval", str(memorised), "--suite", "muse", "--muse-dir", str(root), "--out", str(out), *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sets"] == {"verbmem_forget": 1, "knowmem_forget": 1, "mia_forget": 1, "mia_holdout": 1}
    assert summary["after"]["verbmem_forget"] > 0.5


@pytest.mark.parametrize("extra, message", [
    (["--continuation-tokens", "500"], "is 506 tokens long (6 prefix + 500 continuation); the longest has"),
    (["--holdout", "EMPTY"], "is empty"),
    (["--attacks", "vibes"], "unknown membership attack"),
    (["--muse-dir", "FORGET"], "is not a directory"),
])
def test_bad_muse_input_gets_one_clear_error(memorised, corpus, tmp_path, capsys, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    extra = [str(empty) if e == "EMPTY" else str(corpus["forget"]) if e == "FORGET" else e for e in extra]
    assert main(["eval", str(memorised), "--suite", "muse", "--forget", str(corpus["forget"]), "--out",
                 str(tmp_path / "x"), *SMALL, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err and "Traceback" not in err


def test_muse_without_forget_texts_says_what_it_needs(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", str(tiny_model_dir), "--suite", "muse", "--out", str(tmp_path / "x"), *SMALL]) == 2
    assert "the muse suite needs forget texts" in capsys.readouterr().err
