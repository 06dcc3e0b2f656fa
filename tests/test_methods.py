"""The methods added from open-unlearning's set (WGA, SatImp, CE-U, UNDIAL, PDU, RMU): each loss against
values computed by hand from its paper's definition, each method's step against an independent
re-derivation of open-unlearning's formula from a plain forward of the same model, each trained end to end
on a tiny model that has learned its forget set, and the registry: a method in a module of its own appears
in `unlearn methods`, `unlearn train --help` and the studio with its parameters."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import StopAfter, build_tiny_model, module_env, quiet, run_unlearn
from core import losses
from core.config import UnlearnConfig
from core.data import Example, encode_example, pad_batch
from core.errors import UnlearnError
from core.methods import StepInputs, get_method
from core.reference import OriginalModel, decoder_layers
from core.runs import RunDir
from core.trainer import train

LN2, LN3, LN4, LN6 = math.log(2), math.log(3), math.log(4), math.log(6)


# ---------------------------------------------------------------- losses by hand

def test_token_weighted_ascent_by_hand():
    nll = torch.tensor([[LN2, LN4]])          # p = 0.5, 0.25
    mask = torch.ones_like(nll, dtype=torch.bool)
    # WGA, beta 1: weights p = (0.5, 0.25); -mean(0.5 ln2, 0.25 ln4) = -ln2 / 2
    assert losses.weighted_ascent_loss(nll, mask, losses.wga_weights(nll, 1.0)).item() == pytest.approx(-LN2 / 2)
    # SatImp, beta1 = beta2 = 1: weights p (1 - p) = (0.25, 0.1875)
    expected = -(0.25 * LN2 + 0.1875 * LN4) / 2
    assert losses.weighted_ascent_loss(nll, mask, losses.satimp_weights(nll, 1.0, 1.0)).item() == pytest.approx(expected)
    # a masked-out token counts for nothing
    assert losses.weighted_ascent_loss(nll, torch.tensor([[True, False]]), torch.ones_like(nll)).item() == pytest.approx(-LN2)


def test_ce_unlearning_and_undial_targets_by_hand():
    logits = torch.log(torch.tensor([[[1.0, 2.0, 3.0]]]))     # p = 1/6, 2/6, 3/6
    label = torch.tensor([[2]])
    mask = torch.tensor([[True]])
    # CE-U: the true token (p 3/6) removed -> target (1/3, 2/3, 0); CE = 1/3 ln 6 + 2/3 ln 3
    target = losses.ce_unlearning_target(logits, label)
    assert target[0, 0].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert losses.soft_cross_entropy(logits, target, mask).item() == pytest.approx(LN6 / 3 + 2 * LN3 / 3)
    # UNDIAL: original logits 0, the true token (0) lowered by ln 2 -> target (0.2, 0.4, 0.4)
    target = losses.undial_target(torch.zeros(1, 1, 3), torch.tensor([[0]]), LN2)
    assert target[0, 0].tolist() == pytest.approx([0.2, 0.4, 0.4])
    expected = 0.2 * LN6 + 0.4 * LN3 + 0.4 * LN2
    assert losses.soft_cross_entropy(logits, target, mask).item() == pytest.approx(expected)


def test_logit_flattening_and_activation_distance_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0], [5.0, 0.0, 0.0]]])
    # (max - mean)^2: 1 and 16 on the two masked positions
    assert losses.logit_flattening_loss(logits, torch.tensor([[True, True, False]])).item() == pytest.approx(8.5)
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0]], [[2.0, 0.0], [0.0, 2.0]]])
    mask = torch.tensor([[1, 0], [1, 1]])
    # sequence 1: its one masked position, mean square 1; sequence 2: (2 + 2) / 2; then the batch mean
    assert losses.activation_distance(hidden, torch.zeros_like(hidden), mask).item() == pytest.approx(1.5)


# ---------------------------------------------------------------- one step against open-unlearning's formulas

@pytest.fixture(scope="module")
def step_batch(tokenizer):
    def part(pairs):
        items = [encode_example(tokenizer, Example(answer, prompt), 64)[0] for prompt, answer in pairs]
        return pad_batch(items, tokenizer.pad_token_id)

    return {"forget": part([("What opens the vault?", "The code 4417."), ("Where was Alice born?", "In Lyon, 1950.")]),
            "retain": part([("Capital of France?", "Paris."), ("Two plus two?", "Four, always.")])}


def full_forward(model, part):
    """What open-unlearning's trainers read: model(**inputs) logits over every position, shifted by one."""
    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
    return logits[:, :-1].float(), part["labels"][:, 1:]


def open_unlearning_token_nll(logits, labels):
    return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")


def method_terms(name, tokenizer, batch, params=None, original=None):
    model = build_tiny_model(tokenizer, seed=0).eval()
    method_cls = get_method(name)
    method = method_cls(method_cls.resolve_params(params))
    inputs = StepInputs(model, batch, OriginalModel(model, frozen_copy=original) if original else None)
    return model, {term: float(value.detach()) for term, value in method.loss_terms(inputs)}


@pytest.mark.parametrize("name, term", [("wga", "forget_wga"), ("satimp", "forget_satimp")])
def test_token_weighted_methods_match_open_unlearnings_formula(tokenizer, step_batch, name, term):
    model, terms = method_terms(name, tokenizer, step_batch, {"forget_weight": 1.0})
    with torch.no_grad():
        logits, labels = full_forward(model, step_batch["forget"])
        lm_loss = open_unlearning_token_nll(logits, labels).reshape(-1)
        p = torch.exp(-lm_loss)
        weight = p if name == "wga" else p ** 5.0 * (1 - p) ** 1.0   # WGA beta 1; SatImp beta1 5, beta2 1
        expected = -(weight * lm_loss)[labels.reshape(-1) != -100].mean()
        retain_logits, retain_labels = full_forward(model, step_batch["retain"])
        retain = F.cross_entropy(retain_logits.transpose(1, 2), retain_labels, ignore_index=-100)
    assert terms[term] == pytest.approx(float(expected), rel=1e-5)
    assert terms["retain_nll"] == pytest.approx(float(retain), rel=1e-5)


def test_ceu_matches_open_unlearnings_formula(tokenizer, step_batch):
    model, terms = method_terms("ceu", tokenizer, step_batch)
    with torch.no_grad():
        part = step_batch["forget"]
        labels = part["labels"]
        valid = labels != -100
        first = (valid.cumsum(-1) <= 1) & valid            # the first answer token is left out
        shifted = labels.masked_fill(first, -100)[:, 1:]
        logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, :-1]
        keep = shifted != -100
        rows, targets = logits[keep], shifted[keep]
        target = rows.clone().scatter(-1, targets[:, None], float("-inf")).softmax(-1)
        expected = F.cross_entropy(rows, target)
    assert terms["forget_ceu"] == pytest.approx(float(expected), rel=1e-5)


def test_undial_matches_open_unlearnings_formula_on_answer_positions(tokenizer, step_batch):
    original = build_tiny_model(tokenizer, seed=1).eval()
    model, terms = method_terms("undial", tokenizer, step_batch, original=original)
    with torch.no_grad():
        logits, labels = full_forward(model, step_batch["forget"])
        teacher, _ = full_forward(original, step_batch["forget"])
        answer = labels != -100
        one_hot = F.one_hot(labels.clamp(min=0), logits.shape[-1]).float()
        soft = (teacher - 10.0 * one_hot).softmax(-1)      # beta 10
        per_position = -(soft * logits.log_softmax(-1)).sum(-1)
        expected = per_position[answer].mean()   # open-unlearning averages over every position: see undial.py
    assert terms["forget_undial"] == pytest.approx(float(expected), rel=1e-5)
    assert "retain_nll" not in terms   # its retain weight defaults to 0


def test_pdu_matches_the_papers_loss_with_its_dual_weight(tokenizer, step_batch):
    model, terms = method_terms("pdu", tokenizer, dict(step_batch, retain=dict(
        step_batch["retain"], ref_nll=torch.tensor([3.0, 5.0]))))
    with torch.no_grad():
        logits, labels = full_forward(model, step_batch["forget"])
        margin = logits.max(-1).values - logits.mean(-1)
        expected = (margin ** 2)[labels != -100].mean()
        retain_logits, retain_labels = full_forward(model, step_batch["retain"])
        retain = F.cross_entropy(retain_logits.transpose(1, 2), retain_labels, ignore_index=-100)
        tokens = int((retain_labels != -100).sum())
        bound = 8.0 / tokens + 0.1                          # the original's token-mean NLL + the margin
    assert terms["forget_flatten"] == pytest.approx(float(expected), rel=1e-5)
    assert terms["retain_constraint"] == pytest.approx(100.0 * (float(retain) - bound), rel=1e-5)


def test_rmu_matches_open_unlearnings_formula(tokenizer, step_batch):
    original = build_tiny_model(tokenizer, seed=1).eval()
    model = build_tiny_model(tokenizer, seed=0).eval()
    method_cls = get_method("rmu")
    method = method_cls(method_cls.resolve_params({"layer": 1, "train_layers": 2}))
    from core.methods.base import MethodSetup

    method.prepare(MethodSetup(model, UnlearnConfig(forget="x", seed=3), lambda m: None))
    terms = {t: float(v.detach()) for t, v in method.loss_terms(StepInputs(model, step_batch, OriginalModel(model, original)))}

    def layer1(m, part):   # as open-unlearning's forward_with_cache: a hook on model.layers.1
        cache = []
        handle = m.model.layers[1].register_forward_hook(lambda module, args, out: cache.append(
            out[0] if isinstance(out, tuple) else out))
        m(input_ids=part["input_ids"], attention_mask=part["attention_mask"])
        handle.remove()
        return cache[0]

    def open_unlearning_mse(a, b, mask):
        squared = F.mse_loss(a, b, reduction="none")
        return ((squared * mask.unsqueeze(-1)).mean(2).sum(1) / mask.sum(-1)).mean()

    with torch.no_grad():
        u = torch.rand(1, 1, 32, generator=torch.Generator().manual_seed(3))
        control = (u / u.norm() * 2.0).expand(2, step_batch["forget"]["input_ids"].shape[1], 32)
        forget = open_unlearning_mse(layer1(model, step_batch["forget"]), control, step_batch["forget"]["labels"] != -100)
        retain = open_unlearning_mse(layer1(model, step_batch["retain"]), layer1(original, step_batch["retain"]),
                                     step_batch["retain"]["labels"] != -100)
    assert terms["forget_rmu"] == pytest.approx(float(forget), rel=1e-5)
    assert terms["retain_mse"] == pytest.approx(float(retain), rel=1e-5)


# ---------------------------------------------------------------- end to end on a model that knows its forget set

@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model_dir):
    """The tiny model fine-tuned on forget + retain until it knows them (each token likely enough that the
    token-weighted methods have something to push)."""
    from conftest import write_qa_files

    root = tmp_path_factory.mktemp("learned")
    files = write_qa_files(root, 8, 8)
    both = root / "both.jsonl"
    both.write_text(files["forget"].read_text() + files["retain"].read_text())
    config = UnlearnConfig(model=str(tiny_model_dir), method="sft", forget=str(both), out=str(root / "sft"),
                           max_steps=60, batch_size=8, lr=1e-2, device="cpu", save_steps=0, eval_examples=8)
    train(config, **quiet())
    return root / "sft" / "model", files


NEW_METHODS = {"wga": {}, "satimp": {"forget_weight": 1.0, "beta1": 1.0}, "ceu": {}, "undial": {}, "pdu": {},
               "rmu": {"layer": 1, "steering_coeff": 20.0}}   # SatImp at its defaults (forget weight 0.1, p^5) barely moves in 10 steps


@pytest.mark.parametrize("name", list(NEW_METHODS))
def test_each_new_method_raises_the_forget_nll(learned, tmp_path, name):
    model, files = learned
    config = UnlearnConfig(model=str(model), method=name, forget=str(files["forget"]), retain=str(files["retain"]),
                           out=str(tmp_path / name), max_steps=10, batch_size=4, lr=3e-3, device="cpu", save_steps=0,
                           eval_examples=8, method_params=NEW_METHODS[name] or None)
    result = train(config, **quiet())
    before, after = result.summary["before"]["forget_nll"], result.summary["after"]["forget_nll"]
    assert after > before + 0.05, f"{name}: forget NLL {before:.3f} -> {after:.3f}"


def test_rmu_trains_only_the_chosen_layers_modules(learned, tmp_path):
    from safetensors.torch import load_file

    model, files = learned
    config = UnlearnConfig(model=str(model), method="rmu", forget=str(files["forget"]), retain=str(files["retain"]),
                           out=str(tmp_path / "rmu"), max_steps=3, batch_size=4, lr=1e-3, device="cpu", save_steps=0,
                           eval_examples=0, method_params={"layer": 1, "train_layers": 1})
    train(config, **quiet())
    old, new = load_file(str(model / "model.safetensors")), load_file(str(tmp_path / "rmu" / "model" / "model.safetensors"))
    changed = sorted(name for name in old if not torch.equal(old[name], new[name]))
    assert changed == ["model.layers.1.mlp.down_proj.weight"]


def test_pdus_dual_variable_survives_a_resume(learned, tmp_path):
    model, files = learned
    config = UnlearnConfig(model=str(model), method="pdu", forget=str(files["forget"]), retain=str(files["retain"]),
                           out=str(tmp_path / "whole"), max_steps=8, batch_size=2, lr=1e-3, device="cpu",
                           save_steps=0, eval_examples=0, method_params={"dual_warmup": 0.0})
    whole = [row["dual"] for row in RunDir(train(config, **quiet()).run_dir).metrics()]
    parted = replace(config, out=str(tmp_path / "parted"))
    assert train(parted, stop_event=StopAfter(3), **quiet()).state == "stopped"
    train(replace(parted, resume=True), **quiet())
    resumed = [row["dual"] for row in RunDir(parted.out).metrics()]
    assert len(set(whole)) > 2 and resumed == pytest.approx(whole, rel=1e-4)   # it moved, and the same way


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("params, message", [
    ({"layer": 40}, "rmu's layer 40 is not in this model: it has 2 decoder layers (0-1)"),
    ({"layer": 1, "train_modules": "mlp.nope"}, "rmu's train_modules 'mlp.nope' is not a module"),
    ({"steering_coeff": 0.0}, "rmu's steering_coeff must be > 0"),
    ({"layers": 3}, "method rmu has no hyper-parameter layers"),
])
def test_bad_method_settings_get_one_clear_error(tiny_config, params, message):
    with pytest.raises(UnlearnError) as error:
        train(replace(tiny_config, method="rmu", method_params=params), **quiet())
    assert message in str(error.value)


def test_decoder_layers_are_found_in_every_family_layout(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2, n_positions=32))
    assert decoder_layers(gpt2) is gpt2.transformer.h
    llama = build_tiny_model(tokenizer)
    assert decoder_layers(llama) is llama.model.layers


# ---------------------------------------------------------------- a new method is one file

THROWAWAY = '''
from core.losses import gradient_ascent_loss
from core.methods import Param, UnlearningMethod, register


@register
class Throwaway(UnlearningMethod):
    name = "throwaway"
    summary = "a method that exists only for this test"
    paper = "none"
    params = (Param("zeal", 0.25, "how hard it ascends", "this test", low=0.0, high=1.0),)

    def loss_terms(self, inputs):
        yield "forget_ga", self.params["zeal"] * gradient_ascent_loss(*inputs.nll("forget"))
'''


def test_a_method_in_a_module_of_its_own_appears_everywhere(tmp_path, monkeypatch, tiny_model_dir, qa_files):
    env = module_env(tmp_path, "UNLEARN_METHOD_MODULES", "throwaway_method", THROWAWAY)

    def unlearn(*args):
        return run_unlearn(*args, env=env)
    listed = unlearn("methods").stdout
    assert "throwaway" in listed and "--zeal 0.25  (in [0, 1]) how hard it ascends" in listed
    assert "--zeal X" in unlearn("train", "--help").stdout
    out = tmp_path / "run"
    done = unlearn("train", "--model", tiny_model_dir, "--method", "throwaway", "--zeal", "0.5", "--forget",
                   qa_files["forget"], "--out", out, "--max-steps", 2, "--device", "cpu", "--eval-examples", 0)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "config.json").read_text())["method_params"] == {"zeal": 0.5}
    refused = unlearn("train", "--model", tiny_model_dir, "--method", "throwaway", "--zeal", "3", "--forget",
                      qa_files["forget"], "--out", tmp_path / "bad")
    assert "throwaway's zeal must be in [0, 1], got 3.0" in refused.stderr and "Traceback" not in refused.stderr
    # the studio builds its method list and advanced fields from the same registry
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    from core.methods import METHODS
    from studio.tabs import train as train_tab

    importlib.import_module("throwaway_method")
    try:
        assert "zeal" in train_tab.form_names()
        fields = dict(zip(train_tab.tunable(), train_tab.method_fields("throwaway")))
        assert fields["zeal"]["visible"] and "how hard it ascends" in fields["zeal"]["info"]
        assert not fields["beta"]["visible"]
    finally:   # the registry is the process's: leave it as the other tests expect
        METHODS.pop("throwaway")
        sys.modules.pop("throwaway_method")


# ---------------------------------------------------------------- SURE's saliency

def test_salient_neurons_keep_the_rows_with_the_largest_forget_gradient_by_hand():
    from core.saliency import SalientNeurons

    model = torch.nn.Linear(2, 4)
    model.weight.grad = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 0.0]])   # row norms 5, 1, 10, 0
    model.bias.grad = torch.tensor([2.0, -7.0, 0.5, 0.0])                                # |g| 2, 7, 0.5, 0
    rule = SalientNeurons(0.25)       # 8 neurons: the top quarter (the two largest norms, 10 and 7) stay
    rule.observe_forget_gradient(model)
    model.weight.grad.fill_(1.0)      # the step's whole gradient (forget + retain terms) is masked
    model.bias.grad.fill_(1.0)
    rule.mask_gradients(model)
    assert model.weight.grad.tolist() == [[0, 0], [0, 0], [1, 1], [0, 0]]
    assert model.bias.grad.tolist() == [0, 1, 0, 0]
    assert rule.kept == pytest.approx(3 / 12)    # 2 weights of row 2 and 1 bias of 12 trainable values


def test_sure_updates_only_the_salient_neurons_of_a_step(learned, tmp_path):
    from safetensors.torch import load_file

    model, files = learned
    config = UnlearnConfig(model=str(model), method="sure", forget=str(files["forget"]), retain=str(files["retain"]),
                           out=str(tmp_path / "sure"), max_steps=1, batch_size=4, lr=1e-3, device="cpu", save_steps=0,
                           eval_examples=0, weight_decay=0.0)   # weight decay would move every weight
    train(config, **quiet())
    saved = json.loads((tmp_path / "sure" / "config.json").read_text())
    assert saved["salient_modules"] == 0.1
    old, new = load_file(str(model / "model.safetensors")), load_file(str(tmp_path / "sure" / "model" / "model.safetensors"))
    rows = changed = 0
    for name, before in old.items():
        after = new[name].reshape(before.shape[0], -1) if before.dim() > 1 else new[name][:, None]
        before = before.reshape(before.shape[0], -1) if before.dim() > 1 else before[:, None]
        rows += before.shape[0]
        changed += int((after != before).any(1).sum())
    assert 0 < changed <= 0.1 * rows + 1
    share = RunDir(tmp_path / "sure").metrics()[0]["salient_share"]
    assert 0 < share < 0.5


def test_salient_modules_is_an_option_of_any_method(tiny_config):
    assert replace(tiny_config, method="grad_diff", salient_modules=0.1).resolved().salient_modules == 0.1
    assert replace(tiny_config, method="npo_rt").resolved().salient_modules == 0.0
    with pytest.raises(UnlearnError, match="salient_modules must be in"):
        replace(tiny_config, salient_modules=1.5).resolved()


def test_kl_positions_all_reproduces_the_reference_codes_kl_term(tokenizer, step_batch):
    model, original = build_tiny_model(tokenizer, seed=0).eval(), build_tiny_model(tokenizer, seed=1).eval()
    method_cls = get_method("ga_kl")
    method = method_cls(method_cls.resolve_params(None))
    terms = {}
    for positions in ("answer", "all"):
        inputs = StepInputs(model, step_batch, OriginalModel(model, frozen_copy=original), kl_positions=positions)
        terms[positions] = {t: float(v.detach()) for t, v in method.loss_terms(inputs)}["retain_kl"]
    part = step_batch["retain"]
    with torch.no_grad():
        current = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        ref = original(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        vocab = current.shape[-1]
        reference = F.kl_div(F.log_softmax(current, -1).view(-1, vocab), F.log_softmax(ref, -1).view(-1, vocab),
                             reduction="batchmean", log_target=True)
    assert terms["all"] == pytest.approx(float(reference), rel=1e-5)
    assert terms["answer"] != pytest.approx(terms["all"], rel=1e-3)
