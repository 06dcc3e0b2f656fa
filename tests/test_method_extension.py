"""A method that needs a second set of weights is one file: it declares them (ExtraWeights) and the trainer
builds, hands over, checkpoints and restores them. The method here lives in a module this test writes."""
import importlib
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import StopAfter, quiet
from core.errors import UnlearnError
from core.runs import RunDir
from core.trainer import train

TEACHER_STUDENT = '''
import torch

from core.losses import gradient_ascent_loss, kl_to_reference, sequence_nll
from core.methods import Param, UnlearningMethod, register
from core.methods.base import ExtraWeights
from core.scoring import forward_logits


@register
class TeacherStudent(UnlearningMethod):
    """Gradient ascent held near a frozen teacher, while a student copy learns the forget answers."""
    name = "teacher_student"
    summary = "a method that exists only for this test"
    paper = "none"
    params = (Param("student_lr", 0.5, "the student's SGD learning rate", "this test", low=0.0),)
    extra_weights = (
        ExtraWeights("teacher", "original", help="the model as loaded, never trained"),
        ExtraWeights("student", "current", trainable=True, saved=True, help="a copy that learns the forget set"),
        ExtraWeights("start", "current", help="the weights this invocation started from (read by no loss)"),
    )
    last = None   # (the instance, its extra weights) of the latest run in this process, for the test to read

    def prepare(self, setup):
        student = setup.weights["student"]
        self.student_optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad],
                                                 lr=self.params["student_lr"])
        type(self).last = (self, setup.weights)

    def loss_terms(self, inputs):
        self._nudge_student(inputs)
        logits, labels = inputs.logits("forget")
        with torch.no_grad():
            teacher_logits, _ = forward_logits(inputs.weights("teacher"), inputs.batch["forget"])
        yield "forget_ga", (gradient_ascent_loss(*inputs.nll("forget"))
                            + 0.1 * kl_to_reference(logits, teacher_logits, labels))

    def _nudge_student(self, inputs):
        """One SGD step of the student on this micro-batch's forget answers (its own optimizer)."""
        nll, count = sequence_nll(*forward_logits(inputs.weights("student"), inputs.batch["forget"]))
        self.student_optimizer.zero_grad()
        (nll.sum() / count.sum()).backward()
        self.student_optimizer.step()
'''


@pytest.fixture()
def teacher_student(tmp_path, monkeypatch):
    """The method above, imported from a module of its own; unregistered afterwards."""
    from core.methods import METHODS

    (tmp_path / "teacher_student_method.py").write_text(TEACHER_STUDENT)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("teacher_student_method")
    try:
        yield module.TeacherStudent
    finally:   # the registry is the process's: leave it as the other tests expect
        METHODS.pop("teacher_student")
        sys.modules.pop("teacher_student_method")


def weights_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def assert_equal_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture()
def config(tiny_config):
    return replace(tiny_config, method="teacher_student", retain=None, max_steps=4, batch_size=4, lr=2e-3)


def test_a_method_gets_a_frozen_teacher_and_a_copy_it_trains(teacher_student, config, tiny_model_dir):
    result = train(replace(config, save_steps=2), **quiet())
    assert result.state == "finished" and result.step == 4
    method, weights = teacher_student.last
    teacher, student = weights["teacher"], weights["student"]

    original = load_file(str(tiny_model_dir / "model.safetensors"))
    taught = weights_of(teacher)
    assert original.keys() <= taught.keys()
    assert_equal_weights({name: taught[name] for name in original}, original)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    start = weights_of(weights["start"])   # a frozen copy of the current model: a new run's start is the original
    assert_equal_weights({name: start[name] for name in original}, original)

    assert student.training
    changed = [name for name, w in weights_of(student).items() if not torch.equal(w, original.get(name, w))]
    assert changed
    trained = load_file(str(RunDir(result.run_dir).model_dir / "model.safetensors"))
    assert any(not torch.equal(trained[name], original[name]) for name in original)   # the model trained too

    checkpoint = RunDir(result.run_dir).checkpoints()[-1]
    assert (checkpoint / "extra-student.safetensors").is_file()    # saved=True
    assert not (checkpoint / "extra-teacher.safetensors").exists()  # saved=False


def test_the_trained_copy_is_not_in_the_trainers_optimizer(teacher_student, config, tiny_model_dir):
    """With its own learning rate at 0 the student never moves, though the model beside it trains."""
    train(replace(config, method_params={"student_lr": 0.0}), **quiet())
    _, weights = teacher_student.last
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    student = weights_of(weights["student"])
    assert_equal_weights({name: student[name] for name in original}, original)


def test_a_stopped_run_resumes_exactly_extra_weights_included(teacher_student, config, tmp_path):
    base = replace(config, max_steps=8, save_steps=0)   # 2 steps an epoch: it stops mid-epoch
    assert train(replace(base, out=str(tmp_path / "straight")), **quiet()).state == "finished"
    straight_student = weights_of(teacher_student.last[1]["student"])

    interrupted = replace(base, out=str(tmp_path / "interrupted"))
    stopped = train(interrupted, **quiet(stop_event=StopAfter(2)))
    assert stopped.state == "stopped" and stopped.step == 3
    checkpoint = RunDir(interrupted.out).latest_checkpoint()
    assert checkpoint.name == "step-000003" and (checkpoint / "extra-student.safetensors").is_file()

    resumed = train(replace(interrupted, resume=True), **quiet())
    assert resumed.state == "finished" and resumed.step == 8
    # an unsaved copy of the current model starts from the checkpoint's weights
    start, at_checkpoint = weights_of(teacher_student.last[1]["start"]), load_file(str(checkpoint / "trainable.safetensors"))
    assert_equal_weights({name: start[name] for name in at_checkpoint}, at_checkpoint)
    assert_equal_weights(weights_of(teacher_student.last[1]["student"]), straight_student)
    assert_equal_weights(load_file(str(tmp_path / "interrupted" / "model" / "model.safetensors")),
                         load_file(str(tmp_path / "straight" / "model" / "model.safetensors")))


def test_under_lora_the_teacher_is_the_base_and_the_student_a_copy_of_the_adapted_model(teacher_student, config,
                                                                                         tiny_model_dir):
    # in bf16 (what `auto` picks on an AVX512-BF16 CPU) the copy holds the bf16 frozen base: it must run under
    # training's autocast as the trained model does
    train(replace(config, lora=True, lora_r=4, max_steps=2, dtype="bfloat16"), **quiet())
    _, weights = teacher_student.last
    assert not any("lora_" in name for name, _ in weights["teacher"].named_parameters())
    adapter = {name: p for name, p in weights["student"].named_parameters() if p.requires_grad}
    assert adapter and all("lora_" in name for name in adapter)
    assert any(p.abs().sum() > 0 for name, p in adapter.items() if "lora_B" in name)   # B starts at 0: it trained


def test_a_resume_refuses_a_checkpoint_without_the_saved_weights(teacher_student, config):
    assert train(replace(config, max_steps=6), **quiet(stop_event=StopAfter(1))).state == "stopped"
    (RunDir(config.out).latest_checkpoint() / "extra-student.safetensors").unlink()
    with pytest.raises(UnlearnError, match="holds no extra weights 'student'"):
        train(replace(config, resume=True), **quiet())


def test_extra_weights_declarations_are_checked():
    from core.methods.base import ExtraWeights, StepInputs

    with pytest.raises(ValueError, match="lower-case"):
        ExtraWeights("My Teacher", "original")
    with pytest.raises(ValueError, match="'original' or 'current'"):
        ExtraWeights("teacher", "base")
    with pytest.raises(UnlearnError, match="declare them in extra_weights"):
        StepInputs(torch.nn.Linear(1, 1), {}).weights("teacher")
