"""The reference without a second copy equals a live frozen copy of the original model."""
import copy
from dataclasses import replace

import torch
from safetensors.torch import load_file

from conftest import build_tiny_model
from core.data import Example, encode_examples, pad_batch
from core.losses import sequence_nll
from core.models import add_lora
from core.reference import OriginalModel
from core.runs import RunDir
from core.scoring import forward_logits, score_nll
from core.trainer import train


def encoded(tokenizer, n=6):
    examples = [Example(f"Answer number {i} is {'long ' * i}indeed.", f"Question {i}?") for i in range(n)]
    return encode_examples(tokenizer, examples, 128, "forget").items


def test_per_example_nll_does_not_depend_on_batch_composition(tokenizer):
    model = build_tiny_model(tokenizer).eval()
    items = encoded(tokenizer)
    alone = torch.cat([score_nll(model, [item], tokenizer.pad_token_id)[0] for item in items])
    batched = score_nll(model, items, tokenizer.pad_token_id, batch_size=4)[0]
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-5)


def test_trimmed_logits_give_the_same_nll_as_full_logits(tokenizer):
    model = build_tiny_model(tokenizer).eval()
    part = pad_batch(encoded(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        trimmed, labels = forward_logits(model, part)
    assert trimmed.shape[1] < full.shape[1]
    torch.testing.assert_close(sequence_nll(trimmed, labels), sequence_nll(full, part["labels"]))


def test_cached_reference_nll_equals_a_live_frozen_original(tiny_config, tiny_model_dir, tokenizer):
    """The NPO reference cached before training = what the NPO paper's second, frozen model computes."""
    result = train(replace(tiny_config, method="npo", retain=None, max_steps=3), show_progress=False,
                   log=lambda m: None)
    cached = load_file(str(RunDir(result.run_dir).reference_path))["forget"]
    from core.data import load_examples
    from core.models import load_model

    frozen = load_model(str(tiny_model_dir)).eval()
    items = encode_examples(tokenizer, load_examples(tiny_config.forget), tiny_config.max_length, "forget").items
    live = torch.stack([sequence_nll(*forward_logits(frozen, pad_batch([it], tokenizer.pad_token_id)))[0][0]
                        for it in items])
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-4)


def test_lora_with_adapter_disabled_equals_a_frozen_copy(tokenizer):
    """NPO+KL / GA+KL with LoRA: the original's logits come from the same model, adapter off."""
    base = build_tiny_model(tokenizer)
    frozen = copy.deepcopy(base).eval()
    model = add_lora(base, r=4, alpha=8, dropout=0.0, targets="all-linear")
    with torch.no_grad():  # move the adapter away from its zero start, as training would
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.5)
    part = pad_batch(encoded(tokenizer), tokenizer.pad_token_id)
    keep = part["input_ids"].shape[1]
    adapter_off = OriginalModel(model)(part, keep)
    live = OriginalModel(model, frozen_copy=frozen)(part, keep)
    torch.testing.assert_close(adapter_off, live, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        adapted = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
    assert (adapted - live).abs().max() > 1e-3  # the adapter is really on outside the reference call


def test_full_finetune_kl_reference_is_the_untouched_original(tiny_config):
    """With full fine-tuning the KL reference is a frozen copy that training never changes."""
    result = train(replace(tiny_config, method="npo_kl", max_steps=3), show_progress=False, log=lambda m: None)
    row = RunDir(result.run_dir).metrics()
    # step 1 starts at the original weights: KL(original || current) is zero there
    assert row[0]["loss_retain_kl"] < 1e-6
    assert row[-1]["loss_retain_kl"] > row[0]["loss_retain_kl"]


def test_asking_the_original_keeps_what_the_method_chose_to_train(tokenizer):
    """peft's disable_adapter() re-enables every adapter on exit; RMU trains a few layers' adapters only."""
    from contextlib import nullcontext

    model = add_lora(build_tiny_model(tokenizer), 4, 8, 0.0, "all-linear")
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name and "layers.0." in name)   # as RMU keeps one layer trainable
    chosen = {name for name, param in model.named_parameters() if param.requires_grad}
    part = pad_batch(encoded(tokenizer, 2), tokenizer.pad_token_id)
    OriginalModel(model, None, nullcontext)(part, 3)
    assert {name for name, param in model.named_parameters() if param.requires_grad} == chosen
    with model.disable_adapter():   # the behaviour guarded against, so that this test cannot pass vacuously
        pass
    assert {name for name, param in model.named_parameters() if param.requires_grad} > chosen
