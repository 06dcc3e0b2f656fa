"""Where a training step's memory goes: bytes autograd saves for backward (activations) in one forward pass,
next to the bytes of weights, gradients and AdamW moments, for full fine-tuning, LoRA and LoRA with gradient
checkpointing. Explains the LoRA / full peak-memory ratio that benchmarks/trainer.py measures.

    python benchmarks/activation_memory.py                 # bundled model, 4 TOFU forget01 QA, fp32 CPU
    python benchmarks/activation_memory.py --examples 8

Activations are counted with torch.autograd.graph.saved_tensors_hooks: every tensor saved for backward,
each storage once, parameters excluded. A training step of NPO+RT forwards two such batches (forget and
retain); the trainer backpropagates each loss term before the next forward, so its activation peak is
about one batch's figure (under DDP, where one backward of the sum is kept, about twice).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MiB = 2 ** 20


def saved_activation_bytes(model, part: dict) -> int:
    import torch

    from core.losses import sequence_nll
    from core.scoring import forward_logits

    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits, labels = forward_logits(model, part)
        sequence_nll(logits, labels)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for pointer, size in storages.items() if pointer not in weights)


def build(variant: str, path: str):
    import torch

    from core.models import add_lora, load_model
    from core.trainer import enable_activation_checkpointing

    model = load_model(path, dtype=torch.float32)
    if variant.startswith("lora"):
        model = add_lora(model, 16, 32, 0.0, "all-linear")
    if variant.endswith("gc"):
        enable_activation_checkpointing(model)
        model.enable_input_require_grads()
    return model


def state_bytes(model) -> tuple[int, int]:
    """(all weights, trainable weights) in bytes; gradients and AdamW's two moments add 3x the trainable."""
    params = list(model.parameters())
    unique = {p.untyped_storage().data_ptr(): p.numel() * p.element_size() for p in params}
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return sum(unique.values()), trainable


def main(argv=None) -> int:
    import torch

    from core.data import encode_examples, load_examples, pad_batch
    from core.models import bundled_model_dir, load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=4, help="forget QA in the batch (default 4, the trainer benchmark's)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    path = str(bundled_model_dir())
    tokenizer = load_tokenizer(path)
    items = encode_examples(tokenizer, load_examples("tofu:forget01", "forget")[:args.examples], 256, "forget").items
    part = pad_batch(items, tokenizer.pad_token_id)
    print(f"batch: {tuple(part['input_ids'].shape)} tokens (TOFU forget01, chat template), fp32, CPU\n")
    print(f"{'variant':<10} {'weights':>8} {'trainable':>10} {'grads+AdamW':>12} {'activations/batch':>18}  (MiB)")
    for variant in ("full", "lora", "lora_gc"):
        model = build(variant, path)
        weights, trainable = state_bytes(model)
        activations = saved_activation_bytes(model, part)
        print(f"{variant:<10} {weights / MiB:>8.0f} {trainable / MiB:>10.1f} {3 * trainable / MiB:>12.0f} "
              f"{activations / MiB:>18.0f}")
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
