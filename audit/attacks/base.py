"""What an audit attack is: a way to obtain, from an unlearned run, forget-answer figures that may show the
forgetting undone (a fine-tuned copy, a quantised export, other prompts), measured on forget data it did
not train on, with the retain figures beside them so that damage is not read as recovery.

An attack declares its options as `Param`s (core/methods/params.py), as methods and suites do: `unlearn
audit`'s flags, the studio's fields and the validation are made from these declarations."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from core.errors import require
from core.methods.params import Param


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
    options: dict = field(default_factory=dict)    # the running attack's declared options, checked, defaults filled
    log: object = print
    device: str = "cpu"
    dtype: str = "auto"             # weights of every model the audit scores (auto: bf16 where fast)


class Attack:
    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()     # its options: one `unlearn audit` flag each, read from context.options
    enabled_by_default: ClassVar[bool] = True    # in `unlearn audit`'s default --attacks
    slow: ClassVar[bool] = False                 # minutes where the others take seconds: the studio leaves it unticked
    order: ClassVar[int] = 50                    # place in the default list, the studio and the report (lower first)

    def check(self, context: AuditContext) -> None:
        """Refuse before any work when the run cannot be attacked this way."""

    def run(self, context: AuditContext) -> list[dict]:
        """[{"name", "forget": {"set": name, "original", "unlearned", "attacked"}, "retain": {...}}], plus
        anything the attack reports of itself (steps, files)."""
        raise NotImplementedError

    def resolve(self, given: dict) -> dict:
        """The options this attack declares, the given ones checked against their declaration, defaults filled."""
        return {p.name: p.check(given[p.name], self.name) if given.get(p.name) is not None else p.default
                for p in self.params}


ATTACKS: dict[str, Attack] = {}


def register_attack(cls):
    """Add an attack to the registry. An option name several attacks declare is one flag, so one type."""
    for param in cls.params:
        clash = next((p for a in ATTACKS.values() for p in a.params
                      if p.name == param.name and p.kind is not param.kind), None)
        if clash:
            raise TypeError(f"{cls.name}.{param.name} is {param.kind.__name__} but another attack's is "
                            f"{clash.kind.__name__}: one name, one type")
    ATTACKS[cls.name] = cls()
    return cls


def get_attack(name: str) -> Attack:
    require(name in ATTACKS, f"unknown audit attack {name!r}", f"choose from {', '.join(attack_names())}")
    return ATTACKS[name]


def attack_names() -> list[str]:
    """Every registered attack, in their declared order."""
    return sorted(ATTACKS, key=lambda name: (ATTACKS[name].order, name))


def default_attacks() -> list[str]:
    return [name for name in attack_names() if ATTACKS[name].enabled_by_default]


def declared_options() -> dict[str, list[tuple[Attack, Param]]]:
    """option name -> the attacks that declare it, with their declaration, in the attacks' order."""
    options: dict[str, list[tuple[Attack, Param]]] = {}
    for name in attack_names():
        for param in ATTACKS[name].params:
            options.setdefault(param.name, []).append((ATTACKS[name], param))
    return options


def resolve_options(chosen: list[Attack], given: dict | None) -> dict[str, dict]:
    """attack name -> its options. An option no attack declares is refused; one only attacks not chosen take
    is ignored (the studio sends the fine-tuning steps whichever attacks are ticked)."""
    given = {name: value for name, value in (given or {}).items() if value is not None}
    declared = declared_options()
    unknown = [name for name in given if name not in declared]
    require(not unknown, f"no audit attack takes the option {', '.join(unknown)}",
            "drop it; the attacks take: " + "; ".join(f"{name} ({', '.join(a.name for a, _ in takers)})"
                                                     for name, takers in declared.items()))
    return {attack.name: attack.resolve(given) for attack in chosen}


def fine_tuning_steps(attack: str, default: int, help_text: str, source: str) -> Param:
    """An attack's count of fine-tuning steps, named `<attack>_steps`: the studio's steps field sets them all."""
    return Param(f"{attack}_steps", default, help_text, source, low=1)


def is_step_count(param: Param) -> bool:
    return param.name.endswith("_steps") and param.kind is int


# The learning rate every fine-tuning attack uses (issue 31 may give each attack its own).
ATTACK_LR = Param("relearn_lr", 0.0, "learning rate of the fine-tuning attacks; 0: the run's own",
                  "the run's own learning rate: the attacker fine-tunes as the unlearner trained", low=0.0)
