"""NPO+SAM and NPO+RS (Fan et al. 2025): the gradient one step leaves in .grad against the math, computed
here from plain forwards of copies of the model (full fine-tuning and LoRA); the weights back bit for bit
after the step; the logged forget NLL the one at θ; both trained end to end on a tiny model that learned its
forget set; listed with their parameters and sources; RS's noise resumed exactly; several processes refused."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import StopAfter, build_tiny_model, quiet, run_unlearn
from test_methods import learned, step_batch  # noqa: F401  (module fixtures: a model that knows its forget set, a batch)
from core import losses
from core.config import UnlearnConfig
from core.errors import UnlearnError
from core.methods import StepInputs, get_method
from core.methods.base import MethodSetup
from core.models import add_lora
from core.runs import RunDir
from core.trainer import backward_each_term, train

BETA = 0.1


# ---------------------------------------------------------------- the math, computed here

def answer_nll(model, part):
    """Per-sequence summed answer NLL from a plain forward over every position."""
    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), part["labels"][:, 1:], ignore_index=-100, reduction="none").sum(-1)


def npo_by_hand(model, part):
    return -(2 / BETA) * F.logsigmoid(BETA * (answer_nll(model, part) - part["ref_nll"])).mean()


def retain_by_hand(model, part):
    return answer_nll(model, part).sum() / (part["labels"][:, 1:] != -100).sum()


def trained(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def gradient(loss, model) -> dict[str, torch.Tensor]:
    params = trained(model)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)}


def at_weights(model, weights: dict[str, torch.Tensor]):
    """A copy of `model` whose trained weights are `weights`."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in trained(moved).items():
            p.copy_(weights[name])
    return moved


def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors.values()])


def close(actual: dict, expected: dict, rel: float = 1e-4) -> bool:
    return float((flat(actual) - flat(expected)).norm()) <= rel * float(flat(expected).norm())


# ---------------------------------------------------------------- one step against the math

def test_sam_perturbation_by_hand():
    # g = ([3, 0], [4]): ‖g‖ = 5 over both tensors together, so ε = 0.5·g/5
    step = losses.sam_perturbation([torch.tensor([3.0, 0.0]), torch.tensor([4.0])], 0.5)
    assert step[0].tolist() == pytest.approx([0.3, 0.0]) and step[1].tolist() == pytest.approx([0.4])
    assert losses.global_norm([torch.tensor([3.0, 0.0]), torch.tensor([4.0])]).item() == pytest.approx(5.0)
    assert all(not t.any() for t in losses.sam_perturbation([torch.zeros(3), torch.zeros(2)], 0.5))   # no NaN



@pytest.fixture(params=[False, True], ids=["full", "lora"])
def model(request, tokenizer):
    """The tiny model, or the tiny model under a LoRA adapter whose B is not zero (at B = 0 the gradient
    of A vanishes and half the adapter would go untested)."""
    tiny = build_tiny_model(tokenizer, seed=0)
    if not request.param:
        return tiny.eval()
    tiny = add_lora(tiny, 4, 8, 0.0, "all-linear").eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in tiny.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return tiny


@pytest.fixture()
def batch(model, step_batch):  # noqa: F811
    """The step batch, its forget part with a reference NLL a little below the model's (NPO not saturated)."""
    with torch.no_grad():
        ref = answer_nll(model, step_batch["forget"]) - 1.0
    return {**step_batch, "forget": {**step_batch["forget"], "ref_nll": ref}}


def one_step(name: str, model, batch, **params):
    """Run a method's terms as the trainer does (each backpropagated before the next); return the inputs and
    every weight of the model as it was while each term's backward ran."""
    method_cls = get_method(name)
    method = method_cls(method_cls.resolve_params(params))
    inputs = StepInputs(model, batch)
    seen = {}
    backward_each_term(method.loss_terms(inputs), inputs, lambda term: term.backward(),
                       after=lambda term: seen.setdefault(term, {n: p.detach().clone() for n, p in model.named_parameters()}))
    return inputs, seen


def test_sam_leaves_the_forget_gradient_at_theta_plus_epsilon_plus_the_retain_gradient_at_theta(model, batch):
    rho = 0.5
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    inputs, seen = one_step("npo_sam", model, batch, rho=rho)

    g = gradient(npo_by_hand(model, batch["forget"]), model)
    norm = flat(g).norm()
    epsilon = {name: rho * grad / norm for name, grad in g.items()}
    shifted = at_weights(model, {name: before[name] + epsilon[name] for name in g})
    retain = gradient(retain_by_hand(model, batch["retain"]), model)
    forget_there = gradient(npo_by_hand(shifted, batch["forget"]), shifted)
    expected = {name: forget_there[name] + retain[name] for name in g}
    assert close({name: p.grad for name, p in trained(model).items()}, expected)
    # the perturbation matters at this ρ: NPO+RT's gradient is far from SAM's
    assert not close({name: g[name] + retain[name] for name in g}, expected, rel=1e-2)
    # during the forget backward the trained weights sat at θ + ε and nothing else moved
    during = seen["forget_npo_sam"]
    assert close({name: during[name] - before[name] for name in g}, epsilon, rel=1e-5)
    assert all(torch.equal(during[name], before[name]) for name in before if name not in g)
    # θ back bit for bit, for the retain term and after the step
    assert all(torch.equal(seen["retain_nll"][name], before[name]) for name in before)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    # the forget NLL the trainer logs is the one at θ
    with torch.no_grad():
        assert torch.allclose(inputs.nll("forget")[0], answer_nll(model, batch["forget"]), rtol=1e-5)


def test_rs_averages_the_forget_gradient_over_gaussian_weight_noise(model, batch):
    sigma, samples = 0.02, 3
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, seen = one_step("npo_rs", model, batch, noise_std=sigma, noise_samples=samples)

    names = list(trained(model))
    draws = [seen[f"forget_npo_rs{k}"] for k in range(1, samples + 1)]
    noises = [flat({name: draw[name] - before[name] for name in names}) for draw in draws]
    for noise in noises:                       # N(0, σ²) in every trained weight, a new draw each time
        assert noise.std().item() == pytest.approx(sigma, rel=0.1) and abs(noise.mean().item()) < sigma / 10
    assert not torch.equal(noises[0], noises[1]) and not torch.equal(noises[1], noises[2])
    assert all(torch.equal(draw[name], before[name]) for draw in draws for name in before if name not in names)

    expected = gradient(retain_by_hand(model, batch["retain"]), model)
    for draw in draws:
        noisy = at_weights(model, draw)
        for name, grad in gradient(npo_by_hand(noisy, batch["forget"]), noisy).items():
            expected[name] = expected[name] + grad / samples
    assert close({name: p.grad for name, p in trained(model).items()}, expected)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_several_processes_are_refused(monkeypatch, tokenizer, tiny_config):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    for name in ("npo_sam", "npo_rs"):
        method = get_method(name)(get_method(name).resolve_params({}))
        with pytest.raises(UnlearnError, match=f"method {name} takes a gradient between two forward passes"):
            method.prepare(MethodSetup(build_tiny_model(tokenizer), tiny_config, print))


# ---------------------------------------------------------------- end to end

@pytest.mark.parametrize("name, lora", [("npo_sam", False), ("npo_sam", True), ("npo_rs", False), ("npo_rs", True)])
def test_each_raises_the_forget_nll_of_a_model_that_learned_it(learned, tmp_path, name, lora):  # noqa: F811
    model, files = learned
    config = UnlearnConfig(model=str(model), method=name, forget=str(files["forget"]), retain=str(files["retain"]),
                           out=str(tmp_path / name), max_steps=10, batch_size=4, lr=1e-2 if lora else 3e-3,
                           lora=lora, lora_r=4, device="cpu", save_steps=0, eval_examples=8)
    result = train(config, **quiet())
    before, after = result.summary["before"]["forget_nll"], result.summary["after"]["forget_nll"]
    assert after > before + 0.05, f"{name}{' lora' if lora else ''}: forget NLL {before:.3f} -> {after:.3f}"
    row = RunDir(result.run_dir).metrics()[-1]
    assert "retain_nll" in row and ("loss_forget_npo_sam" in row or "loss_forget_npo_rs3" in row)


def logged_losses(config, stop_after: int | None = None) -> list[float]:
    """Each step's logged loss: of one run, or of a run stopped after `stop_after` steps and resumed."""
    if stop_after is not None:
        assert train(config, stop_event=StopAfter(stop_after), **quiet()).state == "stopped"
        config = replace(config, resume=True)
    return [row["loss"] for row in RunDir(train(config, **quiet()).run_dir).metrics()]


def test_rs_noise_resumes_exactly(learned, tmp_path):  # noqa: F811
    model, files = learned
    config = UnlearnConfig(model=str(model), method="npo_rs", forget=str(files["forget"]), retain=str(files["retain"]),
                           out=str(tmp_path / "whole"), max_steps=4, batch_size=2, lr=3e-3, device="cpu",
                           save_steps=0, eval_examples=0, method_params={"noise_std": 0.05})
    whole = logged_losses(config)
    resumed = logged_losses(replace(config, out=str(tmp_path / "parted")), stop_after=2)
    assert len(resumed) == 4 and resumed == pytest.approx(whole, rel=1e-5)


def test_unlearn_methods_lists_them_with_parameters_and_sources():
    listed = run_unlearn("methods").stdout
    assert "npo_sam" in listed and "npo_rs" in listed and "Sharpness-Aware Minimization" in listed
    assert "--rho 0.01  (>= 0) radius ρ of the weight perturbation" in listed
    assert "default from Unlearn-Smooth run_wmdp_unlearn.sh and MUSE run_muse_unlearn.sh" in listed
    assert "--noise-std 0.0001" in listed and "--noise-samples 3  (>= 1)" in listed and "RSTrainer (n_samples)" in listed
