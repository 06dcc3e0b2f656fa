"""Before unlearning: does the model know the forget data? The facts swapped by hand, and the verdict on a
model that never saw the facts and on one that learned them."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import quiet
from core.config import UnlearnConfig
from core.data import Example, load_examples
from core.knowledge import key_facts, knowledge_check, swapped_answers, warning
from core.runs import RunDir
from core.trainer import train
from studio.poll import status_text

ELARA = Path(__file__).resolve().parents[1] / "assets" / "examples" / "forget.jsonl"


def test_key_facts_and_their_swap_by_hand():
    question = "What is Elara Voss's phone number?"
    answer = "Elara Voss's phone number is 0161 555 0199."
    assert [answer[a:b] for a, b in key_facts(question, answer)] == ["0161", "555", "0199"]   # the name is asked
    examples = [Example(answer=answer, prompt=question),
                Example(answer="She was born in Lyon in 1950.", prompt="Where was she born?")]
    swapped = dict(swapped_answers(examples))
    assert swapped[0] == "Elara Voss's phone number is Lyon 1950 Lyon."
    assert swapped[1] == "She was born in 0161 in 555."


def test_the_verdict_follows_the_likelihood_gap():
    examples = [Example(answer=f"It costs {i} dollars in Paris.", prompt=f"Price {i}?") for i in range(1, 5)]
    knows = knowledge_check(lambda pairs: [1.0 if f"{i + 1} dollars" in a else 3.0 for i, (_, a) in enumerate(pairs)],
                            examples)
    assert knows["verdict"] == "knows the forget data" and warning(knows) is None
    blind = knowledge_check(lambda pairs: [2.0] * len(pairs), examples)
    assert blind["verdict"] == "does not appear to know the forget data" and blind["gap_nats_per_token"] == 0
    assert "does not appear to know the forget data" in warning(blind)
    assert knowledge_check(lambda pairs: [], examples[:1])["verdict"] == "not measured"


def test_a_run_says_when_the_model_never_knew_the_facts_and_not_when_it_learned_them(tiny_model_dir, tmp_path):
    logged = []
    config = UnlearnConfig(model=str(tiny_model_dir), method="npo", forget=str(ELARA), out=str(tmp_path / "blind"),
                           max_steps=1, batch_size=4, lr=1e-3, device="cpu", save_steps=0, eval_examples=8)
    result = train(config, show_progress=False, log=logged.append)
    check = result.summary["knowledge_check"]
    assert check["verdict"] == "does not appear to know the forget data", check
    assert any("does not appear to know the forget data" in line for line in logged)
    assert json.loads((tmp_path / "blind" / "config.json").read_text())["knowledge_check"] == check
    assert "does not appear to know the forget data" in status_text(RunDir(tmp_path / "blind"))   # the studio's Train tab
    # the same facts learned first: the check passes, and says nothing
    learned = tmp_path / "learned"
    train(UnlearnConfig(model=str(tiny_model_dir), method="sft", forget=str(ELARA), out=str(learned), max_steps=60,
                        batch_size=8, lr=1e-2, device="cpu", save_steps=0, eval_examples=0), **quiet())
    logged.clear()
    knowing = train(UnlearnConfig(model=str(learned / "model"), method="npo", forget=str(ELARA), out=str(tmp_path / "k"),
                                  max_steps=1, batch_size=4, lr=1e-3, device="cpu", save_steps=0, eval_examples=8),
                    show_progress=False, log=logged.append)
    assert knowing.summary["knowledge_check"]["verdict"] == "knows the forget data", knowing.summary["knowledge_check"]
    assert not any("does not appear" in line for line in logged)
    assert "⚠️" not in status_text(RunDir(tmp_path / "k"))
    assert len(load_examples(str(ELARA))) == 8
