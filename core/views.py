"""Turn a run's settings into the tokenised batch parts ("views") its method reads.

forget   the forget examples (every method)
retain   retain examples, paired per epoch (methods with a retain term; also logged when given)
normal   Yao's normal data for the KL term (default: the retain set)
mismatch Yao's random normal answers after each forget prompt
idk      IdkDPO's "I don't know" answer to each forget question
"""
from __future__ import annotations

from dataclasses import dataclass

from .data import (EncodedSet, Example, UnlearningDataset, encode_examples, idk_answers, load_examples,
                   mismatch_answers)
from .errors import require
from .tofu import idk_refusals


@dataclass
class RawSets:
    forget: list[Example]
    retain: list[Example] | None
    normal: list[Example] | None


def read_sets(config, method) -> RawSets:
    """Read every file the method needs, failing early (before any model is loaded)."""
    forget = load_examples(config.forget, "forget", config.forget_columns)
    needs_retain = "retain" in method.views
    require(config.retain or not needs_retain, f"method {method.name} needs a retain set",
            "pass --retain FILE (e.g. tofu:retain99), or pick a forget-only method such as npo or ga")
    retain = load_examples(config.retain, "retain", config.retain_columns) if config.retain else None
    normal = None
    if "normal" in method.views:
        require(config.normal or retain, f"method {method.name} needs normal data for its KL and mismatch terms",
                "pass --normal FILE or --retain FILE")
        normal = load_examples(config.normal, "normal", config.normal_columns) if config.normal else retain
    if "mismatch" in method.views or "idk" in method.views:
        require(all(ex.is_qa for ex in forget), f"method {method.name} needs question/answer forget data",
                "give question/answer data (.jsonl/.json/.csv/.parquet, a dataset folder or hf:ORG/NAME), "
                "naming other columns with --forget-columns question=COLUMN,answer=COLUMN")
    return RawSets(forget, retain, normal)


def build_dataset(raw: RawSets, config, method, tokenizer) -> tuple[UnlearningDataset, dict[str, EncodedSet]]:
    """The training dataset plus every encoded set (for reports and before/after scoring)."""
    def encode(examples, role):
        return encode_examples(tokenizer, examples, config.max_length, role)

    # Aligned views are built from the same forget examples, so drop none: keep only encodable ones.
    sets = {"forget": encode(raw.forget, "forget")}
    kept_forget = [raw.forget[i] for i in sets["forget"].kept]
    aligned = {"forget": sets["forget"].items}
    if "idk" in method.views:
        sets["idk"] = encode(idk_answers(kept_forget, idk_refusals(), config.seed), "idk")
        aligned["idk"] = sets["idk"].items
    if "mismatch" in method.views:
        k = config.method_params["mismatch_k"]
        groups = mismatch_answers(kept_forget, raw.normal, k, config.seed)
        flat = encode([ex for group in groups for ex in group], "mismatch")
        require(len(flat.items) == len(groups) * k, "some mismatch answers do not fit in max_length",
                "raise --max-length")
        sets["mismatch"] = flat
        aligned["mismatch"] = [flat.items[i * k:(i + 1) * k] for i in range(len(groups))]
    sampled = {}
    if raw.retain is not None:
        sets["retain"] = encode(raw.retain, "retain")
        sampled["retain"] = sets["retain"].items
    if "normal" in method.views:
        sets["normal"] = sets["retain"] if raw.normal is raw.retain else encode(raw.normal, "normal")
        sampled["normal"] = sets["normal"].items
    for view in aligned:
        require(len(aligned[view]) == len(aligned["forget"]), f"{view} answers do not fit in max_length",
                "raise --max-length")
    return UnlearningDataset(aligned=aligned, sampled=sampled, seed=config.seed), sets

