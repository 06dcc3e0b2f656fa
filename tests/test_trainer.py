"""Training tiny models for real: forgetting happens, stop/resume is exact, NaN stops cleanly, LoRA
(with gradient checkpointing) trains, and every method runs."""
import json
import threading
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import StopAfter, quiet
from core.errors import UnlearnError
from core.methods import METHODS, UnlearningMethod, register
from core.runs import RunDir
from core.trainer import train


def test_npo_rt_raises_forget_nll_and_keeps_retain(tiny_config):
    config = replace(tiny_config, max_steps=30, lr=3e-3, batch_size=8)
    result = train(config, **quiet())
    before, after = result.summary["before"], result.summary["after"]
    assert result.state == "finished" and result.step == 30
    assert after["forget_nll"] > before["forget_nll"] + 1.0
    # retain NLL has the retain term pulling it down: it must not rise like forget NLL does
    assert after["retain_nll"] < before["retain_nll"] + 0.25 * (after["forget_nll"] - before["forget_nll"])


def test_run_directory_contract(tiny_config):
    result = train(replace(tiny_config, max_steps=3, save_steps=2), **quiet())
    run = RunDir(result.run_dir)
    config = run.config()
    assert config["method"] == "npo_rt" and config["method_params"]["beta"] == 0.1
    assert config["data"]["forget"]["examples"] == 8 and "before" in config
    rows = run.metrics()
    assert [row["step"] for row in rows] == [1, 2, 3]
    for key in ("epoch", "loss", "loss_forget_npo", "loss_retain_nll", "forget_nll", "retain_nll", "lr",
                "grad_norm", "tokens_per_second", "wall_time"):
        assert key in rows[-1], key
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["loss_forget_npo"] + rows[-1]["loss_retain_nll"], rel=1e-4)
    # with weight 1 the retain term is the retain NLL itself
    assert rows[-1]["loss_retain_nll"] == pytest.approx(rows[-1]["retain_nll"], rel=1e-4)
    status = run.status()
    assert status["state"] == "finished" and status["progress"] == 1.0
    assert (run.model_dir / "model.safetensors").is_file() and (run.model_dir / "tokenizer.json").is_file()
    assert [p.name for p in run.checkpoints()] == ["step-000002"]
    assert not list(run.path.rglob("*.bin")) and not list(run.path.rglob("*.pt"))  # no pickles anywhere


def test_stop_then_resume_matches_an_uninterrupted_run(tiny_config, tmp_path):
    # 12 steps cross an epoch boundary (8 forget examples, batch 4 -> 2 steps per epoch... and more)
    base = replace(tiny_config, max_steps=12, batch_size=4, grad_accum=2, lr=2e-3, save_steps=0)
    assert train(replace(base, out=str(tmp_path / "straight")), **quiet()).state == "finished"

    interrupted = replace(base, out=str(tmp_path / "interrupted"))
    stopped = train(interrupted, **quiet(stop_event=StopAfter(5)))
    assert stopped.state == "stopped" and stopped.step == 6
    run = RunDir(interrupted.out)
    assert run.status()["state"] == "stopped"
    assert [p.name for p in run.checkpoints()] == ["step-000006"]

    resumed = train(replace(interrupted, resume=True), **quiet())
    assert resumed.state == "finished" and resumed.step == 12
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert [row["step"] for row in run.metrics()] == list(range(1, 13))  # no duplicated curve points


def test_stop_file_stops_a_running_run(tiny_config):
    config = replace(tiny_config, max_steps=10_000)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=train(config, **quiet())))
    worker.start()
    run = RunDir(config.out)
    deadline = time.time() + 60
    while time.time() < deadline and run.status().get("step", 0) < 2:
        time.sleep(0.05)
    run.request_stop()
    worker.join(60)
    assert outcome["result"].state == "stopped" and 2 <= outcome["result"].step < 10_000
    assert run.latest_checkpoint() is not None and not run.stop_requested()


@register
class _NanAtThirdStep(UnlearningMethod):
    """Test-only method: a normal GA loss that turns NaN on its third call."""
    name = "_test_nan"
    summary = paper = "test"
    defaults = {}
    calls = 0

    def loss_terms(self, inputs):
        type(self).calls += 1
        nll, n = inputs.nll("forget")
        loss = -(nll.sum() / n.sum())
        yield "forget_ga", loss * float("nan") if type(self).calls == 3 else loss


def test_non_finite_loss_stops_with_a_message_and_keeps_the_checkpoint(tiny_config):
    _NanAtThirdStep.calls = 0
    config = replace(tiny_config, method="_test_nan", retain=None, max_steps=5, save_steps=2)
    with pytest.raises(UnlearnError) as info:
        train(config, **quiet())
    message = str(info.value)
    assert "non-finite at step 3" in message and "forget_ga = nan" in message and "step-000002" in message
    assert "fix:" in message
    run = RunDir(config.out)
    assert run.status()["state"] == "failed" and "non-finite" in run.status()["error"]
    assert [p.name for p in run.checkpoints()] == ["step-000002"]
    weights = load_file(str(run.checkpoints()[0] / "trainable.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_existing_run_is_refused_unless_resume_or_overwrite(tiny_config):
    train(replace(tiny_config, max_steps=1), **quiet())
    with pytest.raises(UnlearnError, match="already holds a run"):
        train(replace(tiny_config, max_steps=1), **quiet())
    again = train(replace(tiny_config, max_steps=2, overwrite=True), **quiet())
    assert again.step == 2 and [r["step"] for r in RunDir(again.run_dir).metrics()] == [1, 2]


def test_lora_with_gradient_checkpointing_trains_only_the_adapter(tiny_config):
    config = replace(tiny_config, lora=True, lora_r=4, gradient_checkpointing=True, max_steps=3, lr=1e-2)
    result = train(config, **quiet())
    model_dir = RunDir(result.run_dir).model_dir
    adapter = load_file(str(model_dir / "adapter_model.safetensors"))
    lora_b = [w for name, w in adapter.items() if "lora_B" in name]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)   # B starts at zero: it moved, so grads flowed
    assert json.loads((model_dir / "adapter_config.json").read_text())["r"] == 4
    assert result.summary["after"]["forget_nll"] != result.summary["before"]["forget_nll"]


ON_TWO_LAYERS = {"rmu": {"layer": 1}}   # its default layer, 7, is not in the tiny model


@pytest.mark.parametrize("method", sorted(m for m in METHODS if not m.startswith("_")))  # sft included
def test_every_method_trains_and_logs_its_terms(tiny_config, method):
    result = train(replace(tiny_config, method=method, max_steps=2, method_params=ON_TWO_LAYERS.get(method)), **quiet())
    row = RunDir(result.run_dir).metrics()[-1]
    terms = [key for key in row if key.startswith("loss_")]
    assert terms, row
    assert all(torch.isfinite(torch.tensor(row[t])) for t in terms)
    assert row["loss"] == pytest.approx(sum(row[t] for t in terms), rel=1e-4, abs=1e-5)


def test_sft_learns_the_data(tiny_config):
    """The learn stage lowers the NLL of its data (the unlearning methods raise it)."""
    result = train(replace(tiny_config, method="sft", retain=None, max_steps=10, lr=3e-3), **quiet())
    assert result.summary["after"]["forget_nll"] < result.summary["before"]["forget_nll"] - 0.5


def test_yao_stops_early_once_the_forget_answers_are_unlikely_enough(tiny_config):
    # Yao et al.'s max_bad_loss: a tiny random model's forget NLL (~ln(vocab)) is far above 2 from step 1
    result = train(replace(tiny_config, method="yao", max_steps=6, method_params={"max_forget_loss": 2.0}), **quiet())
    run = RunDir(result.run_dir)
    assert result.state == "finished" and result.step == 1
    assert "max_forget_loss 2" in result.summary["stopped_early"] and "done early" in run.status()["message"]
    assert [row["step"] for row in run.metrics()] == [1] and run.metrics()[0]["forget_nll"] > 2.0
    assert (run.model_dir / "model.safetensors").is_file()
    # Yao's default limit (100) is far away: the run goes the distance
    full = train(replace(tiny_config, method="yao", max_steps=3, out=tiny_config.out + "-default"), **quiet())
    assert full.step == 3 and full.summary["stopped_early"] is None


def test_max_forget_loss_belongs_to_yao_only(tiny_config):
    with pytest.raises(UnlearnError, match="has no hyper-parameter max_forget_loss"):
        train(replace(tiny_config, method="npo", method_params={"max_forget_loss": 5.0}), **quiet())


def test_method_needing_retain_without_one(tiny_config):
    with pytest.raises(UnlearnError, match="needs a retain set"):
        train(replace(tiny_config, retain=None), **quiet())


def test_empty_forget_set_is_refused_before_loading_a_model(tiny_config, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UnlearnError, match="is empty"):
        train(replace(tiny_config, forget=str(empty)), **quiet())


@pytest.mark.parametrize("method_name", ["grad_diff", "ga_kl"])
def test_backward_per_term_gives_the_gradients_of_the_summed_loss(tokenizer, method_name):
    from conftest import build_tiny_model
    from core.data import Example, encode_example, pad_batch
    from core.methods import StepInputs, get_method
    from core.reference import OriginalModel
    from core.trainer import backward_each_term

    def part(pairs: list[tuple[str, str]]) -> dict:
        items = [encode_example(tokenizer, Example(answer, prompt), 64)[0] for prompt, answer in pairs]
        return pad_batch(items, tokenizer.pad_token_id)

    model, original = build_tiny_model(tokenizer, seed=0).eval(), build_tiny_model(tokenizer, seed=1).eval()
    batch = {"forget": part([("What opens the vault?", "The code 4417."), ("Where was Alice born?", "In Lyon, 1950.")]),
             "retain": part([("Capital of France?", "Paris."), ("When does water boil?", "At 100 degrees."),
                             ("Two plus two?", "Four.")])}
    method_cls = get_method(method_name)
    method = method_cls(method_cls.defaults())
    reference = OriginalModel(model, frozen_copy=original)

    def gradients(backward_terms) -> tuple[dict, dict]:
        model.zero_grad()
        terms = backward_terms(StepInputs(model, batch, reference))
        return ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                {name: float(value.detach()) for name, value in terms.items()})

    def summed(inputs):
        terms = dict(method.loss_terms(inputs))
        sum(terms.values()).backward()
        return terms

    summed_grads, summed_terms = gradients(summed)
    each_grads, each_terms = gradients(lambda inputs: backward_each_term(method.loss_terms(inputs), inputs,
                                                                          torch.Tensor.backward))
    assert list(each_terms) == list(summed_terms) and len(each_terms) == 2
    assert each_terms == pytest.approx(summed_terms, rel=1e-6)
    assert all(abs(v) > 0 for v in each_terms.values())      # both terms contribute (KL: two different models)
    assert summed_grads.keys() == each_grads.keys() and summed_grads
    for name, grad in summed_grads.items():
        torch.testing.assert_close(each_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_callbacks_observe_the_loop_without_patching_it(tiny_config):
    from core.runs import RunState
    from core.trainer import Callback

    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_loop_begin(self, state):
            self.events.append(("begin", state.step, state.total_steps, state.trainable_params > 0))

        def on_step_end(self, state):
            self.events.append(("step", state.step, state.tokens > 0))

        def on_log(self, state, row):
            self.events.append(("log", row["step"], row is state.metrics))

        def on_checkpoint(self, state, path):
            self.events.append(("checkpoint", state.step, (path / "trainer_state.json").is_file()))

        def on_loop_end(self, state, outcome):
            self.events.append(("end", state.step, outcome))

    recorder = Recorder()
    result = train(replace(tiny_config, max_steps=4, logging_steps=2, save_steps=3), callbacks=[recorder], **quiet())
    assert recorder.events == [("begin", 0, 4, True), ("step", 1, True), ("step", 2, True), ("log", 2, True),
                               ("step", 3, True), ("checkpoint", 3, True), ("step", 4, True), ("log", 4, True),
                               ("end", 4, RunState.FINISHED)]
    assert [row["step"] for row in RunDir(result.run_dir).metrics()] == [2, 4]


def test_the_trainer_builds_everything_at_construction_and_before_its_loop(tiny_config):
    """Every attribute exists once Trainer() returns: run() builds the rest into RunParts and counts in
    Progress, and adds nothing to the trainer."""
    from core.trainer import Progress, Trainer

    trainer = Trainer(replace(tiny_config, max_steps=2), **quiet())
    attributes = set(vars(trainer))
    assert trainer.run_dir.path.is_dir() and trainer.progress == Progress()
    result = trainer.run()
    assert set(vars(trainer)) == attributes
    assert result.step == trainer.progress.step == trainer.progress.total_steps == 2


def test_a_single_process_launcher_asked_for_several_is_told_apart():
    from core.trainer import launched_for_several_but_one_runs as one_of_several

    simple = {"ACCELERATE_MIXED_PRECISION": "no", "MASTER_PORT": "29500"}   # accelerate launch --num_processes 2
    assert one_of_several(1, simple)
    assert not one_of_several(2, {**simple, "WORLD_SIZE": "2"})            # --multi_gpu: torchrun, two ranks
    assert not one_of_several(1, {"ACCELERATE_MIXED_PRECISION": "no"})     # accelerate launch, one process asked
    assert not one_of_several(1, {})                                        # plain `unlearn train`
