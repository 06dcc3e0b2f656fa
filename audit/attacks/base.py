"""What an audit attack is: a way to obtain, from an unlearned run, forget-answer figures that may show the
forgetting undone (a fine-tuned copy, a quantised export, other prompts), measured on forget data it did
not train on, with the retain figures beside them so that damage is not read as recovery.

An attack declares its options as `Param`s (core/methods/params.py), as methods and suites do: `unlearn
audit`'s flags, the studio's fields and the validation are made from these declarations."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from core.errors import UnlearnError, require
from core.kinds import as_kind
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
    settings: object = None         # core.evaluation.scores.Settings: samples, generated tokens, batch
    options: dict = field(default_factory=dict)    # the running attack's declared options, checked, defaults filled
    log: object = print
    device: str = "cpu"
    dtype: str = "auto"             # weights of every model the audit scores (auto: bf16 where fast)
    seeds: int = 1                  # the fine-tuning attacks repeat their split and training with this many seeds
    seeds_at: str = "worst"         # where the repeats run: the worst case's learning rate, or every one ("all")
    control: str | None = None      # a never-learned model that goes through every fine-tuning attack too
    starts: Path | None = None      # the models fine-tuning starts from, made once per audit (finetune.py)
    score: object = None            # callable(model, tokenizer, examples, name, answers=True) -> (figures, each)
    baseline_each: object = None    # callable(set name, examples) -> {stage: per-example lists}, as baseline
    kept: object = None             # callable(key, compute) -> compute()'s dict, kept in OUT until the audit ends
    groups: list | None = None      # each forget example's group, when an attack splits by group
    tick: object = lambda: None     # callable(): one unit of work (Attack.units) finished, for the progress bar
    grow: object = lambda units: None   # callable(units): work found on the way (a sweep reaching further)
    control_cache: Path | None = None   # keeps the control's attacked figures across audits (finetune.py)
    control_digest: str | None = None   # the control's weights by content, worked out when first needed

    def run_seeds(self) -> list[int]:
        """The run's own seed, then the next ones: one per repeat (--seeds)."""
        return seeds_of(self.config, self.seeds)


def seeds_of(config: dict, count: int) -> list[int]:
    """The seeds an audit of a run with `config` uses for `count` repeats: the run's own, then the next ones."""
    first = config.get("seed", 42)
    return [first + number for number in range(count)]


class Attack:
    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()     # its options: one `unlearn audit` flag each, read from context.options
    enabled_by_default: ClassVar[bool] = True    # in `unlearn audit`'s default --attacks
    slow: ClassVar[bool] = False                 # minutes where the others take seconds: the studio leaves it unticked
    order: ClassVar[int] = 50                    # place in the default list, the studio and the report (lower first)

    def check(self, context: AuditContext) -> None:
        """Refuse before any work when the run cannot be attacked this way."""

    def needs_groups(self, options: dict) -> bool:
        """Whether, with these options, it splits the forget set by group (context.groups then holds them)."""
        return False

    def units(self, context: AuditContext) -> int:
        """How many units of work it reports through context.tick() (the audit's progress bar and time left):
        one for the whole attack unless it says otherwise."""
        return 1

    def run(self, context: AuditContext) -> list[dict]:
        """[{"name", "forget": {"set": name, "original", "unlearned", "attacked"}, "retain": {...}}], plus
        anything the attack reports of itself (steps, files)."""
        raise NotImplementedError

    def resolve(self, given: dict) -> dict:
        """The options this attack declares, the given ones checked against their declaration, defaults filled."""
        return {p.name: p.check(given[p.name] if given.get(p.name) is not None else p.default, self.name)
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


@dataclass(frozen=True)
class Sweep(Param):
    """An option that takes several values, comma-separated, each tried in turn (the attacker's best shot).
    A value `xK` is K times the run's own setting. Declared and checked like any Param; its checked value
    is a list (numbers, and "xK" texts)."""

    def range_text(self) -> str:
        return "comma-separated, each > 0: a number, or xK for K times the run's own"

    def check(self, value, attack: str):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        values = [self._item(item, attack) for item in items if str(item).strip()]
        require(bool(values), f"{attack}'s {self.name} names no value", f"use for example {self.flag} {self.default}")
        return values

    def _item(self, item, attack: str):
        text = str(item).strip()
        try:
            number = as_kind(text.removeprefix("x"), float)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise UnlearnError(f"{attack}'s {self.name} must be {self.range_text()}, got {text!r}",
                               f"use for example {self.flag} {self.default} ({self.help})")
        return f"x{number:g}" if text.startswith("x") else number


def swept_values(values: list, own: float) -> list[float]:
    """A Sweep's checked values as numbers: "xK" is K times `own` (the run's setting)."""
    return [own * float(v[1:]) if isinstance(v, str) else float(v) for v in values]


def learning_rates(attack: str) -> Sweep:
    """An attack's learning rates, `<attack>_lr`: every one is tried, and the verdict takes the worst case."""
    return Sweep(f"{attack}_lr", "x0.3,x1,x3", f"learning rates of the {attack} attack, each tried",
                 "the run's own learning rate and 0.3x / 3x of it: the attacker's best of three, as UNDO and "
                 "Deeb & Roger 2024 sweep the attacker's rate and take the worst case (docs/audit.md)")


def learning_rate_reach(attack: str) -> Param:
    """How far an attack's learning-rate sweep may reach past its ends, `<attack>_lr_extend`: while the
    attacker does best at the highest (lowest) rate tried, the next one up (down) by the sweep's own step."""
    return Param(f"{attack}_lr_extend", 1, f"more learning rates the {attack} attack may try beyond its sweep's "
                 "ends, one step of the sweep's own ratio at a time, while the attacker does best at an end",
                 "a worst case at the end of the grid is not yet the attacker's best: UNDO sweeps 1e-6..1e-3 and "
                 "Deeb & Roger 2024 a grid wide enough to bracket it (docs/audit.md)", low=0, high=4)
