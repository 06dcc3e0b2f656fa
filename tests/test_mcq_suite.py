"""The mcq suite through lm-evaluation-harness: its accuracy against an independent argmax of each choice's
log-likelihood, a model that learned the right answers scores higher, and bad rows are refused by line."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_model, quiet
from core.cli import main
from core.config import UnlearnConfig
from core.trainer import train

QUESTIONS = [("Who wrote book 1?", ["Mira Holt wrote it.", "Zorblat Quenfeather wrote it.", "Ada Stone wrote it."], 1),
             ("Who wrote book 2?", ["Zorblat Quenfeather wrote it.", "Mira Holt wrote it."], 0),
             ("Who wrote book 3?", ["Ada Stone wrote it.", "Mira Holt wrote it.", "Zorblat Quenfeather wrote it."], 2),
             ("Who wrote book 4?", ["Zorblat Quenfeather wrote it.", "Ada Stone wrote it."], 0)]
FAST = ["--batch-size", "4", "--device", "cpu", "--dtype", "float32"]


def write_mcq(path, rows):
    path.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in rows))
    return path


def choice_loglikelihood(model, tokenizer, question, choice):
    """log p(" " + choice | "Question: ...\\nAnswer:"), summed over the choice's tokens, by a plain forward."""
    context = tokenizer(f"Question: {question}\nAnswer:")["input_ids"]
    whole = tokenizer(f"Question: {question}\nAnswer: {choice}")["input_ids"]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(len(context), len(whole)))


def test_accuracy_is_the_argmax_of_each_choices_loglikelihood(tiny_model_dir, tokenizer, tmp_path):
    forget = write_mcq(tmp_path / "forget.jsonl", QUESTIONS)
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_model_dir), "--suite", "mcq", "--forget", str(forget), "--format", "text",
                 "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    log = json.loads((out / "mcq_log.json").read_text())["after"]["forget"]
    model = build_tiny_model(tokenizer).eval()   # the same weights as tiny_model_dir (seed 0)
    picks = []
    for (question, choices, answer), logged in zip(QUESTIONS, log):
        ours = [choice_loglikelihood(model, tokenizer, question, c) for c in choices]
        assert logged["choice_loglikelihoods"] == pytest.approx(ours, abs=1e-3)
        picks.append(int(max(range(len(ours)), key=ours.__getitem__)) == answer)
    assert summary["after"]["forget"]["acc"] == pytest.approx(sum(picks) / len(picks))
    assert summary["after"]["forget"]["questions"] == 4 and "before" not in summary


def test_a_model_that_learned_the_answers_scores_higher_than_before(tiny_model_dir, tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"question": f"Who wrote book {i}?", "answer": "Zorblat Quenfeather wrote it."})
                             + "\n" for i in range(1, 5)))
    run = tmp_path / "learned"
    train(UnlearnConfig(model=str(tiny_model_dir), method="sft", forget=str(facts), out=str(run), max_steps=40,
                        batch_size=4, lr=1e-2, device="cpu", save_steps=0, eval_examples=0), **quiet())
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--suite", "mcq", "--forget", str(write_mcq(tmp_path / "f.jsonl", QUESTIONS)),
                 "--format", "text", "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["forget"]["acc"] == 1.0 > summary["before"]["forget"]["acc"]
    assert "forget acc" in (out / "summary.md").read_text()
    # and unlearning those facts takes the accuracy down again
    forgot = tmp_path / "forgot"
    train(UnlearnConfig(model=str(run / "model"), method="ga", forget=str(facts), out=str(forgot), max_steps=10,
                        batch_size=4, lr=1e-2, device="cpu", save_steps=0, eval_examples=0), **quiet())
    after = tmp_path / "after"
    assert main(["eval", str(forgot), "--suite", "mcq", "--forget", str(tmp_path / "f.jsonl"), "--format", "text",
                 "--out", str(after), *FAST]) == 0
    unlearned = json.loads((after / "summary.json").read_text())
    assert unlearned["before"]["forget"]["acc"] == 1.0 > unlearned["after"]["forget"]["acc"]


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "line 1: answer 2 is not the index of one of its 2 choices"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "line 1 needs a list of at least two text choices"),
    ({"choices": ["a", "b"], "answer": 0}, "line 1 has no question text"),
])
def test_bad_rows_are_refused_by_file_and_line_before_any_model_loads(tmp_path, capsys, row, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    assert main(["eval", str(tmp_path / "no-such-model"), "--suite", "mcq", "--forget", str(bad), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err and "no-such-model" not in err
