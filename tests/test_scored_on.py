"""One model, one forget NLL: the same model on the same examples in the same precision and prompts gives the
same figure in the run summary, `unlearn eval`, the audit and the export's parity report, and each says what
it was computed on (issue 35, item 5)."""
from __future__ import annotations

import pytest

from conftest import train_tiny_run
from core.runs import RunDir, read_json

N = 6   # the first N forget and retain examples, everywhere


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    config = train_tiny_run(tmp_path_factory.mktemp("scored"), tiny_model_dir, eval_examples=N, dtype="float32")
    return RunDir(config.out)


def test_summary_eval_and_audit_agree_on_the_forget_nll(finished_run, tmp_path):
    from audit import run_audit
    from core.evaluation.evaluator import evaluate

    summary = read_json(finished_run.summary_path)
    assert summary["scored_on"] == {"examples": {"forget": N, "retain": N}, "dtype": "float32",
                                    "prompts": "chat-template"}
    evaluated = evaluate(str(finished_run.path), "quick", tmp_path / "eval", max_samples=N, max_new_tokens=2,
                         device="cpu", dtype="float32")
    assert evaluated["scored_on"] == summary["scored_on"]
    audit = run_audit(finished_run.path, tmp_path / "audit", ["benign"], {"benign_steps": 1, "benign_lr": "x1"},
                      max_samples=N, max_new_tokens=2, device="cpu", dtype="float32", log=lambda message: None)
    assert audit["scored_on"] == summary["scored_on"]
    benign = next(r for r in audit["results"] if r["name"].startswith("benign"))
    for figures in (evaluated["after"]["forget"]["nll"], benign["forget"]["unlearned"]["nll"]):
        assert figures == pytest.approx(summary["after"]["forget_nll"], abs=1e-4)
    assert evaluated["after"]["retain"]["nll"] == pytest.approx(summary["after"]["retain_nll"], abs=1e-4)
    assert "first 6 forget / 6 retain examples, float32, chat-template prompts" in (tmp_path / "eval" / "summary.md").read_text()
    assert "first 6 forget / 6 retain examples, float32" in (tmp_path / "audit" / "audit.md").read_text()


def test_a_different_basis_is_said_beside_the_figure(finished_run, tmp_path):
    """Fewer examples (or another precision) may give another figure: the basis beside it says so."""
    from core.evaluation.evaluator import evaluate

    fewer = evaluate(str(finished_run.path), "quick", tmp_path / "eval", max_samples=2, max_new_tokens=2,
                     device="cpu", dtype="float32")
    assert fewer["scored_on"] == {"examples": {"forget": 2, "retain": 2}, "dtype": "float32",
                                  "prompts": "chat-template"}
    assert "first 2 forget / 2 retain examples" in (tmp_path / "eval" / "summary.md").read_text()


def test_the_export_parity_report_agrees_and_says_its_basis(finished_run, tmp_path):
    from export.bundle import export_run

    summary = read_json(finished_run.summary_path)
    manifest = export_run(finished_run.path, tmp_path / "bundle", formats=["hf"], parity_examples=N,
                          log=lambda message: None)
    parity = read_json(tmp_path / "bundle" / "parity.json")
    assert parity["scored_on"] == summary["scored_on"] == manifest["metrics_scored_on"]
    assert parity["pytorch"]["forget_nll"] == pytest.approx(summary["after"]["forget_nll"], abs=1e-3)
    assert parity["pytorch"]["retain_nll"] == pytest.approx(summary["after"]["retain_nll"], abs=1e-3)
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert card.count("first 6 forget / 6 retain examples, float32, chat-template prompts") == 2   # scores, parity
