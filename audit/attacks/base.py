"""What an audit attack is: a way to obtain, from an unlearned run, forget-answer figures that may show the
forgetting undone (a fine-tuned copy, a quantised export, other prompts), measured on forget data it did
not train on, with the retain figures beside them so that damage is not read as recovery."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from core.errors import require


@dataclass
class AuditContext:
    run: Path                       # the unlearned run (never written to)
    config: dict                    # its config.json
    work: Path                      # a scratch folder for this attack (deleted afterwards)
    forget: list                    # the run's forget examples
    retain: list | None
    measure: object                 # callable(model, tokenizer, examples, name) -> figures {nll, prob, rougeL}
    baseline: object                # callable(set name, examples) -> {"original": figures, "unlearned": figures}
    models: dict = field(default_factory=dict)     # "original" / "unlearned" -> (model, tokenizer)
    settings: object = None         # core.evaluation.evaluator.Settings: samples, generated tokens, batch
    options: dict = field(default_factory=dict)
    log: object = print
    device: str = "cpu"
    dtype: str = "auto"             # weights of every model the audit scores (auto: bf16 where fast)


class Attack:
    name: ClassVar[str]
    summary: ClassVar[str]

    def check(self, context: AuditContext) -> None:
        """Refuse before any work when the run cannot be attacked this way."""

    def run(self, context: AuditContext) -> dict:
        """{"forget": {"set": name, "original", "unlearned", "attacked"}, "retain": {...}} figures, plus
        anything the attack reports of itself (steps, files)."""
        raise NotImplementedError


ATTACKS: dict[str, Attack] = {}


def register_attack(cls):
    ATTACKS[cls.name] = cls()
    return cls


def get_attack(name: str) -> Attack:
    require(name in ATTACKS, f"unknown audit attack {name!r}", f"choose from {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]
