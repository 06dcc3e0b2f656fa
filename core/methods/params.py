"""A method's hyper-parameters, declared once beside its loss as `Param`s. The CLI flags, `unlearn methods`,
the studio's advanced fields, validation and config.json are all generated from these declarations."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UnlearnError
from ..kinds import as_kind

KINDS = {float: "a number", int: "a whole number", str: "text", bool: "true or false"}


@dataclass(frozen=True)
class Param:
    name: str
    default: float | int | str | bool
    help: str
    source: str = ""                  # the paper or code the default comes from
    low: float | None = None          # allowed range, inclusive unless `above` (strictly greater than low)
    high: float | None = None
    above: bool = False
    choices: tuple[str, ...] = ()

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.above else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.above else '>='} {self.low:g}"
        if self.high is not None:
            return f"<= {self.high:g}"
        return KINDS[self.kind]

    def check(self, value, method: str):
        """The value as this parameter's type, or one clear error naming the range."""
        value = self._coerce(value, method)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        bad = (self.choices and value not in self.choices) or (number and not math.isfinite(value)) or (
            number and self.low is not None and (value <= self.low if self.above else value < self.low)) or (
            number and self.high is not None and value > self.high)
        if bad:
            raise UnlearnError(f"{method}'s {self.name} must be {self.range_text()}, got {value!r}",
                               f"use for example {self.flag} {self.default} ({self.help})")
        return value

    def _coerce(self, value, method: str):
        try:
            return as_kind(value, self.kind)
        except ValueError:
            raise UnlearnError(f"{method}'s {self.name} must be {KINDS[self.kind]}, got {value!r}",
                               f"use for example {self.flag} {self.default}") from None


# The parameters many methods share, with their usual meaning; each method passes its own default and source.
def forget_weight(default: float, source: str) -> Param:
    return Param("forget_weight", default, "weight of the forget term", source, low=0.0)


def retain_weight(default: float, source: str) -> Param:
    return Param("retain_weight", default, "weight of the NLL on retain answers", source, low=0.0)


def kl_weight(default: float, source: str, on: str = "retain") -> Param:
    return Param("kl_weight", default, f"weight of the KL(original || current) on {on} data", source, low=0.0)


def beta(default: float, source: str, what: str = "NPO") -> Param:
    return Param("beta", default, f"inverse temperature of the {what} loss", source, low=0.0, above=True)
