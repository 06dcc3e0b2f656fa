"""Adding an evaluation suite is one file: a throw-away "length" suite (the mean length of the model's answers),
written here into a temporary folder and named in UNLEARN_SUITE_MODULES, is listed by `unlearn suites`, gets
its flag in `unlearn eval`, runs through `unlearn eval --suite length` and through the Python entry point
(`core.evaluation.evaluator.evaluate`) and writes its report, with nothing in the repository edited. It runs
on the bundled model (the tiny random one answers with empty strings, which have no length to measure), loaded
once per entry point."""
from __future__ import annotations

import importlib
import json
import sys

import pytest

from conftest import module_env, run_unlearn, write_qa_files
from core.errors import UnlearnError

LENGTH_SUITE = '''
import time

from core.data import load_examples
from core.evaluation.probes import generate
from core.evaluation.report import prepare_out, table, title
from core.evaluation.suites import Need, Suite, register_suite
from core.methods import Param


@register_suite
class LengthSuite(Suite):
    name = "length"
    summary = "mean length of the greedy answers to the forget questions"
    needs = (Need("forget", "forget questions (.jsonl)", required=True, from_run=True),)
    options = (Param("unit", "words", "what a length counts", "this test", choices=("words", "characters")),)

    def run(self, context):
        started = time.time()
        prepare_out(context.out)
        examples = load_examples(context.require_data("forget", self), "forget")[:context.settings.max_samples]
        answers = generate(context.loaded.model, context.loaded.tokenizer, [ex.prompt for ex in examples],
                           context.settings.max_new_tokens, context.settings.batch_size, "length")
        count = (lambda text: len(text.split())) if context.options["unit"] == "words" else len
        lengths = [count(answer) for answer in answers]
        summary = {"suite": self.name, "model": context.loaded.source, "dtype": context.loaded.dtype,
                   "mean_length": sum(lengths) / len(lengths), "answers": len(answers)}
        return self.finish(context, summary, {"answers": answers, "lengths": lengths}, "length_log.json", started)

    def table(self, summary):
        rows = [["mean length", summary["mean_length"]], ["answers", summary["answers"]]]
        return f"{title(summary, 'length')}\\n\\n{table(['figure', 'value'], rows)}"
'''
FAST = ["--max-samples", "3", "--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def suite_env(tmp_path_factory) -> dict:
    """The environment in which `unlearn` finds the suite: its folder on PYTHONPATH, its module named."""
    return module_env(tmp_path_factory.mktemp("suites"), "UNLEARN_SUITE_MODULES", "length_suite", LENGTH_SUITE)


@pytest.fixture(scope="module")
def forget_file(tmp_path_factory):
    return write_qa_files(tmp_path_factory.mktemp("data"), 8, 0)["forget"]


@pytest.fixture(scope="module")
def cli_eval(suite_env, forget_file, bundled_dir, tmp_path_factory):
    """`unlearn eval --suite length --unit words` on the bundled model: (its output folder, the finished process)."""
    out = tmp_path_factory.mktemp("cli") / "out"
    done = run_unlearn("eval", bundled_dir, "--suite", "length", "--forget", forget_file, "--unit", "words",
                       "--out", out, *FAST, env=suite_env)
    assert done.returncode == 0, done.stderr
    return out, done


def test_unlearn_suites_and_eval_help_show_the_new_suite(suite_env):
    listed = run_unlearn("suites", env=suite_env).stdout
    assert "length  mean length of the greedy answers to the forget questions" in listed
    assert "option --unit words  (one of words, characters)" in listed
    assert "--unit VALUE" in run_unlearn("eval", "--help", env=suite_env).stdout


def test_unlearn_eval_runs_the_new_suite_and_writes_its_report(cli_eval, bundled_dir):
    out, done = cli_eval
    summary = json.loads((out / "summary.json").read_text())
    log = json.loads((out / "length_log.json").read_text())
    assert summary["suite"] == "length" and summary["answers"] == 3 == len(log["answers"])   # --max-samples 3
    assert summary["mean_length"] > 0
    assert summary["mean_length"] == pytest.approx(sum(len(a.split()) for a in log["answers"]) / 3)
    assert summary["settings"]["unit"] == "words" and summary["settings"]["max_new_tokens"] == 6
    table = (out / "summary.md").read_text()
    assert table.startswith(f"Evaluation of {bundled_dir} (length suite, float32 weights)")
    assert table.strip() in done.stdout     # the table printed is the one written


def test_a_bad_option_of_the_new_suite_is_one_clear_error(suite_env, forget_file, bundled_dir, tmp_path):
    refused = run_unlearn("eval", bundled_dir, "--suite", "length", "--forget", forget_file, "--unit", "tokens",
                          "--out", tmp_path / "bad", *FAST, env=suite_env)
    assert refused.returncode == 2
    assert "the length suite's unit must be one of words, characters" in refused.stderr and "fix:" in refused.stderr
    assert not (tmp_path / "bad").exists()    # refused before any model was opened


@pytest.fixture
def length_suite(tmp_path, monkeypatch):
    """The suite imported into this process as UNLEARN_SUITE_MODULES would, and forgotten after the test."""
    from core.evaluation.suites import SUITES

    (tmp_path / "length_suite.py").write_text(LENGTH_SUITE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SUITES, "length", None)      # the registry gets its entry back out after the test
    yield importlib.import_module("length_suite").LengthSuite
    sys.modules.pop("length_suite", None)


def test_the_python_entry_point_runs_the_new_suite(length_suite, cli_eval, bundled_dir, forget_file, tmp_path):
    from core.evaluation.evaluator import evaluate

    with pytest.raises(UnlearnError, match="the length suite has no option colour"):
        evaluate(str(bundled_dir), "length", tmp_path / "refused", {"forget": str(forget_file)}, {"colour": "red"})
    summary = evaluate(str(bundled_dir), "length", tmp_path / "out", {"forget": str(forget_file)}, {"unit": "characters"},
                       max_samples=3, max_new_tokens=6, batch_size=2, device="cpu", dtype="float32")
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    answers = json.loads((tmp_path / "out" / "length_log.json").read_text())["answers"]
    by_words = json.loads((cli_eval[0] / "summary.json").read_text())["mean_length"]
    assert answers == json.loads((cli_eval[0] / "length_log.json").read_text())["answers"]   # greedy: the same
    assert summary["mean_length"] == pytest.approx(sum(map(len, answers)) / 3) and summary["mean_length"] > by_words
