"""`unlearn plan`: each part of the estimate computed here by hand from the tiny Llama's shapes (vocabulary V,
hidden 32, MLP 64, 2 layers, tied head), sharding under FSDP, the largest batch that fits, QLoRA's smaller
base, and bad input. The estimate against measured peaks is benchmarks/memory.py's (docs/benchmarks.md)."""
from __future__ import annotations

import json

import pytest

from conftest import run_unlearn
from core.errors import UnlearnError
from core.plan import GiB, OPTIMIZER_BYTES, PlanRequest, plan_memory

HIDDEN, MLP, LAYERS, KV = 32, 64, 2, 16   # 4 heads of 8, 2 key/value heads: k and v project to 16


def by_hand(vocab: int) -> dict:
    attention = HIDDEN * HIDDEN * 2 + HIDDEN * KV * 2          # q, o; k, v
    mlp = 3 * HIDDEN * MLP
    norms = 2 * HIDDEN
    params = vocab * HIDDEN + LAYERS * (attention + mlp + norms) + HIDDEN   # the head is the embedding (tied)
    linears = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN), (HIDDEN, MLP), (HIDDEN, MLP),
               (MLP, HIDDEN)]
    lora = LAYERS * sum(16 * (i + o) for i, o in linears)      # r 16: A is r x in, B is out x r
    linear_weights = LAYERS * (attention + mlp)
    buffers = 2 * (HIDDEN // 4) // 2   # the rotary embedding's inv_freq and original_inv_freq: head_dim / 2 each
    return {"params": params, "lora": lora, "linear": linear_weights, "buffers": buffers}


def request(tiny_model_dir, **changes) -> PlanRequest:
    return PlanRequest(**{"model": str(tiny_model_dir), "device": "cpu", "dtype": "float32", **changes})


def test_full_fine_tuning_parts_by_hand(tiny_model_dir, tokenizer):
    hand = by_hand(len(tokenizer))
    plan = plan_memory(request(tiny_model_dir, method="npo_kl"))   # a KL term: the frozen original is a copy
    assert plan.parts["weights"] == (hand["params"] + hand["buffers"]) * 4   # accelerate counts buffers too
    assert plan.parts["gradients"] == hand["params"] * 4
    assert plan.parts["optimizer"] == hand["params"] * 8
    assert plan.parts["copies"] == (hand["params"] + hand["buffers"]) * 4
    assert plan_memory(request(tiny_model_dir, method="npo_rt")).parts.get("copies") is None   # cached NLL only


def test_the_robust_methods_own_copies_of_the_trained_weights(tiny_model_dir, tokenizer):
    hand = by_hand(len(tokenizer))
    trained = hand["params"] * 4
    copies = {m: plan_memory(request(tiny_model_dir, method=m)).parts.get("copies") for m in
              ("npo_sam", "npo_rs", "npo_wa", "mudman")}
    # SAM: the weights before the step up and the forget gradient; RS: the weights before the noise; WA: the
    # average; MUDMAN: its adversary (a copy of the model) and three gradient-sized buffers
    assert copies == {"npo_sam": 2 * trained, "npo_rs": trained, "npo_wa": trained,
                      "mudman": (hand["params"] + hand["buffers"]) * 4 + 3 * trained}
    lora = plan_memory(request(tiny_model_dir, method="npo_sam", lora=True)).parts["copies"]
    assert lora == 2 * hand["lora"] * 4     # under LoRA only the adapter is copied


def test_lora_trains_r_times_in_plus_out_per_linear_and_keeps_no_copy(tiny_model_dir, tokenizer):
    hand = by_hand(len(tokenizer))
    plan = plan_memory(request(tiny_model_dir, method="npo_kl", lora=True))
    assert plan.parts["gradients"] == hand["lora"] * 4 and plan.parts["optimizer"] == hand["lora"] * 8
    assert "copies" not in plan.parts and any("adapter switched off" in n for n in plan.notes)


def test_8bit_moments_fsdp_sharding_and_4bit_base(tiny_model_dir, tokenizer):
    hand = by_hand(len(tokenizer))
    assert plan_memory(request(tiny_model_dir, optim="adamw_8bit")).parts["optimizer"] == \
        hand["params"] * OPTIMIZER_BYTES["adamw_8bit"] == hand["params"] * 2
    one, two = (plan_memory(request(tiny_model_dir, gpus=n)) for n in (1, 2))
    for part in ("weights", "gradients", "optimizer"):
        assert two.parts[part] == pytest.approx(one.parts[part] / 2)
    assert two.per_example == one.per_example   # activations are per device
    ddp = plan_memory(request(tiny_model_dir, gpus=2, strategy="ddp"))
    assert ddp.parts["weights"] == one.parts["weights"]
    lora = plan_memory(request(tiny_model_dir, lora=True))
    qlora = plan_memory(request(tiny_model_dir, lora=True, load_in_4bit=True))
    saved = hand["linear"] * (4 - (0.5 + 0.127 / 8))   # each linear weight: fp32 -> nf4 with its scales
    assert lora.parts["weights"] - qlora.parts["weights"] == pytest.approx(saved)


def test_largest_batch_is_the_last_that_fits_and_checkpointing_needs_less(tiny_model_dir):
    plan = plan_memory(request(tiny_model_dir, batch_size=1))
    fixed = sum(plan.parts.values())
    memory = fixed + 5.5 * plan.per_example
    assert plan.largest_batch(memory) == 5 and plan.largest_batch(fixed - 1) == 0
    checkpointed = plan_memory(request(tiny_model_dir, gradient_checkpointing=True))
    assert checkpointed.per_example_parts["activations"] < plan.per_example_parts["activations"]
    assert checkpointed.per_example_parts["answer logits"] == plan.per_example_parts["answer logits"]


def test_bad_input_is_refused(tiny_model_dir):
    with pytest.raises(UnlearnError, match="4-bit or 8-bit base trains only through LoRA"):
        plan_memory(request(tiny_model_dir, load_in_4bit=True))
    with pytest.raises(UnlearnError, match="unknown method"):
        plan_memory(request(tiny_model_dir, method="nope"))


def test_the_command_prints_parts_and_the_largest_batch(tiny_model_dir):
    shown = run_unlearn("plan", "--model", tiny_model_dir, "--device", "cpu", "--lora", "--memory", "2")
    assert shown.returncode == 0, shown.stderr
    assert "weights" in shown.stdout and "largest batch that fits 2 GiB:" in shown.stdout
    as_json = run_unlearn("plan", "--model", tiny_model_dir, "--device", "cpu", "--json", "--memory", "2")
    parts = json.loads(as_json.stdout)
    assert parts["total"] == pytest.approx(sum(parts["parts"].values()) + parts["batch"] * sum(parts["per_example"].values()))
    assert parts["largest_batch"] >= 1 and parts["total"] < 2 * GiB
    refused = run_unlearn("plan", "--model", tiny_model_dir, "--load-in-4bit")
    assert refused.returncode == 2 and "fix: add --lora" in refused.stderr + refused.stdout


def test_planning_leaves_a_model_loaded_at_the_same_time_in_another_thread_alone(tiny_model_dir):
    """The studio plans in one thread while another loads a model: sizing on the meta device must not leak."""
    import threading

    from transformers import AutoModelForCausalLM

    stop, errors = threading.Event(), []

    def keep_planning():
        while not stop.is_set():
            try:
                plan_memory(request(tiny_model_dir))
            except Exception as exc:   # noqa: BLE001  (reported below)
                errors.append(exc)

    planner = threading.Thread(target=keep_planning)
    planner.start()
    try:
        devices = {p.device.type for _ in range(20)
                   for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()}
    finally:
        stop.set()
        planner.join()
    assert devices == {"cpu"} and not errors


def test_every_optimizer_the_trainer_offers_has_its_moment_bytes_in_the_plan():
    from core.config import OPTIMIZERS

    assert set(OPTIMIZER_BYTES) == set(OPTIMIZERS)
