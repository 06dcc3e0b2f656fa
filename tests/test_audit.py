"""`unlearn audit`: the recovery fraction by hand, the relearn split, every attack end to end on a tiny LoRA
run (the quantize attack agreeing with the export's parity report), a run that forgot nothing, bad input."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from audit import markdown, recovery, rejudged, run_audit
from audit.attacks.relearn import split
from conftest import quiet
from unlearn.cli import main
from core.errors import UnlearnError
from core.runs import RunDir
from core.trainer import train

FAST = dict(max_samples=8, max_new_tokens=4, batch_size=4, device="cpu",
            options={"relearn_steps": 3, "benign_steps": 3, "relearn_lr": "x1", "benign_lr": "x1"})


def test_recovery_fraction_and_verdicts_by_hand():
    # NLL 2.0 before, 5.0 after unlearning, 3.5 after the attack: half of the gain undone
    assert recovery.recovery(2.0, 5.0, 3.5, "nll") == pytest.approx(0.5)
    assert recovery.recovery(0.8, 0.2, 0.2, "rougeL") == 0.0           # still forgotten
    assert recovery.recovery(0.8, 0.2, 0.9, "rougeL") == pytest.approx(7 / 6)   # more than before
    assert recovery.recovery(2.0, 2.01, 3.0, "nll") is None           # nothing was forgotten: undefined
    # the forget-50 % RMU run: its greedy answers came out better (ROUGE-L 0.792 -> 0.830), and a benign
    # fine-tune reworded them (0.771): that read as a "recovery" of 1.6; there was nothing to recover
    assert recovery.recovery(0.792, 0.830, 0.771, "rougeL") is None
    assert recovery.recovery(2.0, 1.5, 3.0, "nll") is None            # unlearning made the answers likelier
    # rephrasing: each prompt against the original asked the same way. NLL gap 2.0 asked the usual way, 1.0
    # asked so: half the effect gone. ROUGE-L 0.9 -> 0.45 usually (a 50 % drop), 0.4 -> 0.3 asked so (25 %).
    assert recovery.recovery(0.2, 2.2, 1.5, "nll", attacked_original=0.5) == pytest.approx(0.5)
    assert recovery.recovery(0.9, 0.45, 0.3, "rougeL", attacked_original=0.4) == pytest.approx(0.5)
    assert recovery.recovery(0.2, 2.2, 3.2, "nll", attacked_original=1.2) == pytest.approx(0.0)   # prompt cost only
    assert recovery.recovery(0.8, 0.2, 0.5, "rougeL", attacked_original=0.8) == pytest.approx(0.5)   # = the plain formula
    assert recovery.recovery(0.9, 0.45, 0.0, "rougeL", attacked_original=0.005) is None   # the original shows nothing
    # the forget-50 % NPO+RT audit's plain prompt: ROUGE-L 0.792 -> 0.421 asked the usual way, 0.326 -> 0.183
    # asked plainly. Against the unlearned model asked the usual way it read as a recovery of 2.5 (shallow);
    # asked alike the drops are 46.9 % and 44.0 %
    assert recovery.recovery(0.792, 0.421, 0.183, "rougeL", attacked_original=0.326) == pytest.approx(0.064, abs=1e-3)
    assert recovery.verdict({"nll": 0.1, "rougeL": 0.2}) == ("robust", 0.2)
    assert recovery.verdict({"nll": 0.3, "rougeL": None}) == ("partial", 0.3)
    assert recovery.verdict({"nll": 0.9}) == ("shallow", 0.9)
    assert recovery.verdict({"nll": None})[0].startswith("undefined")
    assert recovery.overall({"a": "robust", "b": "partial"}) == "partial"


def test_the_relearn_split_never_overlaps_the_measured_half():
    examples = list(range(11))
    relearned, measured = split(examples, 0.5, seed=3)
    assert not set(relearned) & set(measured) and sorted(relearned + measured) == examples
    assert len(relearned) == 6 and split(examples, 0.5, seed=3) == (relearned, measured)
    assert split([1, 2], 0.9, seed=0)[1]     # always something left to measure


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    from conftest import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("audited"), tiny_model_dir, max_steps=8, lr=5e-2, lora=True,
                          lora_r=4)


def test_every_attack_on_a_lora_run(lora_run, tmp_path):
    before = {p.name: p.stat().st_mtime for p in RunDir(lora_run.out).path.rglob("*") if p.is_file()}
    report = run_audit(lora_run.out, tmp_path / "audit", ["relearn", "benign", "rephrase", "quantize"],
                       log=lambda m: None, **FAST)
    names = [r["name"] for r in report["results"]]
    assert names[:2] == ["relearn", "benign"] and "rephrase: plain" in names and "rephrase: few-shot" in names
    assert any(n.startswith("quantize: gguf-q4_0") for n in names)
    relearn = report["results"][0]
    assert relearn["trained_on"] == 4 and relearn["steps"] == 3
    forget = relearn["forget"]
    assert forget["original"]["nll"] < forget["unlearned"]["nll"]        # the run did forget
    expected = (forget["attacked"]["nll"] - forget["unlearned"]["nll"]) / (forget["original"]["nll"] - forget["unlearned"]["nll"])
    assert relearn["recovery"]["nll"] == pytest.approx(expected)
    assert relearn["verdict"] in ("robust", "partial", "shallow") and "retain_change" in relearn
    assert "rougeL" in forget["attacked"]     # the attacked model answers the forget questions...
    assert set(relearn["retain"]["attacked"]) == {"nll", "prob"}   # ...and is only teacher-forced on retain
    for result in report["results"]:
        if result["name"].startswith("quantize") and result["nll_recovery_in_parity"] is not None:
            assert result["recovery"]["nll"] == pytest.approx(result["nll_recovery_in_parity"], abs=1e-3)
    for result in report["results"][2:]:   # measured once: an interval over the examples, around the point
        each = result["forget_each"]
        pooled = sum(each["attacked"]["nll"]) / sum(each["attacked"]["tokens"])
        assert pooled == pytest.approx(result["forget"]["attacked"]["nll"], abs=1e-4)
        for figure, value in result["recovery"].items():
            low, high = result["recovery_interval"][figure] or (None, None)
            assert value is None or (low is None or low <= value + 1e-3) and (high is None or value - 1e-3 <= high)
    by_name = {r["name"]: r for r in report["results"]}
    plain = by_name["rephrase: plain"]["forget"]   # the usual prompt's figures, and the original asked so beside
    assert plain["original"] == by_name["benign"]["forget"]["original"] != plain["attacked_original"]
    assert report["overall"] in ("robust", "partial", "shallow")
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    assert "Overall" in (tmp_path / "audit" / "audit.md").read_text()
    assert not (tmp_path / "audit" / ".work").exists()
    after = {p.name: p.stat().st_mtime for p in RunDir(lora_run.out).path.rglob("*") if p.is_file()}
    assert after == before     # the run's own files are never touched


def test_a_run_that_forgot_nothing_has_no_recovery_to_report(lora_run, tmp_path):
    still = replace(lora_run, out=str(tmp_path / "still"), lr=1e-12, max_steps=1)
    train(still, **quiet())
    report = run_audit(still.out, tmp_path / "audit", ["relearn"], log=lambda m: None, dtype="bfloat16", **FAST)
    result = report["results"][0]
    assert all(v is None for v in result["recovery"].values())
    assert result["verdict"].startswith("undefined") and report["overall"] == "undefined"
    assert report["dtype"] == "bfloat16" and "scored in bfloat16" in (tmp_path / "audit" / "audit.md").read_text()


def test_bad_audit_input_gets_one_clear_error(lora_run, tmp_path, capsys):
    assert main(["audit", lora_run.out, "--out", str(tmp_path / "a"), "--attacks", "shake"]) == 2
    assert "unknown audit attack 'shake'" in capsys.readouterr().err
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"question": "q?", "answer": "a."}) + "\n")
    small = replace(lora_run, out=str(tmp_path / "small"), forget=str(one), max_steps=1)
    train(small, **quiet())
    with pytest.raises(UnlearnError, match="splits the forget set, which has 1 example"):
        run_audit(small.out, tmp_path / "b", ["relearn"], log=lambda m: None, **FAST)
    no_retain = replace(lora_run, out=str(tmp_path / "nr"), method="npo", retain=None, max_steps=1)
    train(no_retain, **quiet())
    with pytest.raises(UnlearnError, match="benign attack fine-tunes on the run's retain set"):
        run_audit(no_retain.out, tmp_path / "c", ["benign"], log=lambda m: None, **FAST)
    assert main(["audit", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert main(["audit", lora_run.out, "--out", str(tmp_path / "e"), "--relearn-fraction", "1.5"]) == 2
    assert "error: relearn's relearn_fraction must be in (0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(UnlearnError, match="no audit attack takes the option relearn_step") as refused:
        run_audit(lora_run.out, tmp_path / "f", ["relearn"], {"relearn_step": 3}, log=lambda m: None)
    assert "relearn_steps (relearn)" in refused.value.fix
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()   # refused before anything was written


def test_export_carries_the_audit_into_the_bundle_card_and_manifest(lora_run, tmp_path):
    from export.bundle import export_run

    run = replace(lora_run, out=str(tmp_path / "run"))
    train(run, **quiet())
    audit = run_audit(run.out, tmp_path / "run" / "audit", ["relearn"], log=lambda m: None,
                      **{**FAST, "options": {"relearn_steps": 12, "relearn_lr": 5e-2}})
    manifest = export_run(run.out, tmp_path / "bundle", formats=("hf",), parity_examples=1, log=lambda m: None)
    assert manifest["audit"]["overall"] == audit["overall"]
    assert audit["options"] == {"relearn": {"relearn_fraction": 0.5, "relearn_steps": 12, "relearn_lr": [5e-2],
                                            "relearn_lr_extend": 1, "relearn_split": "example"}}
    assert manifest["audit"]["attacks"]["relearn"]["worst_recovery"] == audit["results"][0]["worst_recovery"]
    assert (tmp_path / "bundle" / "audit" / "audit.json").is_file()
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert "## Robustness audit" in card and f"Overall: **{audit['overall']}**" in card
    relearn = audit["results"][0]   # its largest recovery, with the interval of the figure it came from
    figure = max((f for f, v in relearn["recovery"].items() if v is not None), key=relearn["recovery"].get)
    low, high = relearn["recovery_interval"][figure]
    assert f"| relearn | {relearn['verdict'].split(':')[0]} | {relearn['worst_recovery']:.2f} [{low:.2f}, {high:.2f}] | - |" in card
    if audit["results"][0]["verdict"] in ("shallow", "partial"):
        assert "relearn restores what was forgotten" in card
    else:
        assert "No attack restored more than a quarter" in card


def test_the_attacks_declare_their_options_and_the_flags_are_made_from_them(monkeypatch):
    import audit
    from audit.attacks import Attack, declared_options, default_attacks, register_attack
    from core.methods.params import Param

    assert default_attacks() == ["relearn", "benign", "quantize", "rephrase"]
    assert {name: [a.name for a, _ in takers] for name, takers in declared_options().items()} == {
        "relearn_fraction": ["relearn"], "relearn_steps": ["relearn"], "relearn_lr": ["relearn"],
        "relearn_lr_extend": ["relearn"], "relearn_split": ["relearn"], "benign_steps": ["benign"],
        "benign_lr": ["benign"], "benign_lr_extend": ["benign"]}
    calls = []
    monkeypatch.setattr(audit, "run_audit", lambda *args, **kwargs: calls.append(args) or {})
    monkeypatch.setattr(audit, "markdown", lambda report: "")
    assert main(["audit", "r", "--out", "o", "--relearn-steps", "7", "--relearn-lr", "1e-4",
                 "--benign-lr-extend", "0"]) == 0
    run, out, attacks, options = calls[0][:4]
    assert attacks == ["relearn", "benign", "quantize", "rephrase"]
    # text: checked by each attack's declaration
    assert options == {"relearn_steps": "7", "relearn_lr": "1e-4", "benign_lr_extend": "0"}
    with pytest.raises(TypeError, match="one name, one type"):
        register_attack(type("Clash", (Attack,), {"name": "clash", "params": (Param("relearn_steps", 0.5, "x"),)}))


def test_the_export_forgetting_check_uses_the_audits_recovery():
    """One definition: a run that forgot 0.001 nats showed a GGUF "recovery" of -13.55 in the bundle's
    parity report (methods_demo, SatImp) while the audit called it undefined."""
    from export.parity import forgetting_check

    original, unlearned = {"forget_nll": 0.2, "forget_rougeL": 0.9}, {"forget_nll": 2.2, "forget_rougeL": 0.3}
    checks, _ = forgetting_check({"gguf-q4_0": {"forget_nll": 1.7, "forget_rougeL": 0.3}}, unlearned, original)
    assert checks["gguf-q4_0"]["nll_recovery"] == pytest.approx(recovery.recovery(0.2, 2.2, 1.7, "nll")) == 0.25
    forgot_nothing = {"forget_nll": 0.201, "forget_rougeL": 0.9}
    checks, warnings = forgetting_check({"gguf-q4_0": {"forget_nll": 0.215, "forget_rougeL": 0.9}},
                                        forgot_nothing, original)
    assert checks["gguf-q4_0"]["nll_recovery"] is None and not warnings


def test_update_redoes_only_the_named_attacks_and_keeps_the_rest(lora_run, tmp_path, capsys):
    out = tmp_path / "audit"
    first = run_audit(lora_run.out, out, ["benign", "rephrase"], log=lambda m: None, **FAST)
    updated = run_audit(lora_run.out, out, ["rephrase"], log=lambda m: None, update=True, **FAST)
    assert [r["name"] for r in updated["results"]] == [r["name"] for r in first["results"]]
    assert updated["results"][0] == json.loads(json.dumps(first["results"][0]))   # benign kept as it was
    assert updated["attacks"] == ["benign", "rephrase"] and updated["updated"][0]["attacks"] == ["rephrase"]
    assert json.loads((out / "audit.json").read_text())["updated"] == updated["updated"]
    with pytest.raises(UnlearnError, match="measured 8 forget"):
        run_audit(lora_run.out, out, ["rephrase"], log=lambda m: None, update=True, **{**FAST, "max_samples": 4})
    assert main(["audit", lora_run.out, "--out", str(tmp_path / "none"), "--update"]) == 2
    assert "there is no audit in" in capsys.readouterr().err


def test_a_stored_audit_is_judged_again_with_the_current_rules():
    figures = {"original": {"nll": 0.135, "rougeL": 0.792}, "unlearned": {"nll": 0.136, "rougeL": 0.830},
               "attacked": {"nll": 0.154, "rougeL": 0.771}}
    stale = {"name": "benign", "forget": figures, "recovery": {"nll": None, "rougeL": 1.57}, "verdict": "shallow",
             "worst_recovery": 1.57, "seconds": 60.0}
    report = rejudged({"results": [stale], "overall": "shallow"})
    assert report["results"][0]["recovery"] == {"nll": None, "rougeL": None}
    assert report["results"][0]["verdict"].startswith("undefined") and report["overall"] == "undefined"
    assert report["results"][0]["seconds"] == 60.0 and report["thresholds"]["robust_below"] == recovery.ROBUST


def test_the_report_shows_the_original_asked_the_rephrased_way_beside_the_usual():
    usual = {"original": {"nll": 0.2}, "unlearned": {"nll": 2.2}}
    results = [{"name": "relearn", "forget": {**usual, "attacked": {"nll": 0.7}}},
               {"name": "rephrase: plain", "forget": {**usual, "attacked_original": {"nll": 0.9},
                                                      "attacked": {"nll": 2.5}}}]
    text = markdown({"run": "r", "method": "npo", "wall_seconds": 1.0, **rejudged({"results": results})})
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["relearn"][6:8] == ["0.2000", "-"] and rows["relearn"][3] == "0.7500"   # (2.2-0.7)/(2.2-0.2)
    # asked plainly the original's NLL is 0.9: the gap 1.6 against the usual 2.0 -> recovery 1 - 1.6/2.0
    assert rows["rephrase: plain"][6:8] == ["0.2000", "0.9000"] and rows["rephrase: plain"][3] == "0.2000"
