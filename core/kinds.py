"""Settings' values as their declared type: shared by UnlearnConfig's fields and the methods' `Param`s."""
from __future__ import annotations


def as_kind(value, kind: type):
    """`value` as bool, int, float or str, numbers also from text ("1e-5", "4.0"); ValueError when it is not
    one. YAML reads 1e-5 (no dot) as a string, and JSON may write whole numbers as 4.0."""
    if kind in (bool, str):
        if isinstance(value, kind):
            return value
        raise ValueError(value)
    if isinstance(value, bool):
        raise ValueError(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(value) from None
    if kind is float:
        return number
    if number.is_integer():
        return int(number)
    raise ValueError(value)
