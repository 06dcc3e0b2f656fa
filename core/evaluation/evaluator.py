"""The driver: `evaluate` opens a model or run (and the original model), checks the inputs and runs one
suite of the registry (`core.evaluation.suites`: tofu, quick, muse, mcq, and any named in
UNLEARN_SUITE_MODULES). `unlearn eval` is this function behind flags."""
from __future__ import annotations

from pathlib import Path

from ..data import COLUMN_ROLES, column_map, column_pairs
from ..errors import require
from ..models import open_model
from .scores import Settings
from .suites import EvalContext, get_suite


def evaluate(model: str, suite: str, out, data: dict | None = None, options: dict | None = None,
             original: str | None = None, max_samples: int | None = None, max_new_tokens: int | None = None,
             batch_size: int = 8, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
             columns: dict | None = None) -> dict:
    """Evaluate `model` (a run directory, a checkpoint, a model directory, a LoRA adapter or 'bundled') with the
    suite named `suite`; write its files into `out` and return its summary (also out/summary.json, summary.md).

    data: need name -> path or spec (a run's own setting fills a need marked from_run); options: the suite's
    options by name (defaults for the rest); original: the model before unlearning (default: a run's base
    model); max_samples / max_new_tokens: the suite's defaults when None; columns: role -> column map
    (--forget-columns) for a set given in `data` (a run's own set is read with the map it was trained with)."""
    chosen = get_suite(suite)
    settings = Settings(max_samples=chosen.max_samples if max_samples is None else max_samples,
                        max_new_tokens=chosen.max_new_tokens if max_new_tokens is None else max_new_tokens,
                        batch_size=batch_size)
    settings.validate()
    given = {name: value for name, value in (data or {}).items() if value}
    unused = [n for n in given if n not in {need.name for need in chosen.needs}]
    require(not unused, f"the {chosen.name} suite does not read --{', --'.join(u.replace('_', '-') for u in unused)}",
            "drop it, or choose the suite that does (`unlearn suites`)")
    resolved = chosen.resolve_options(options)
    chosen.check_inputs(given)                    # bad data fails before any model is loaded
    for role, spec in (columns or {}).items():
        column_pairs(spec, role)                  # and a malformed column map
    loaded = open_model(model, device, trust_remote_code, dtype)
    run_config = loaded.run_config or {}
    inputs = {need.name: given.get(need.name) or (run_config.get(need.name) if need.from_run else None)
              for need in chosen.needs}
    maps = {role: column_map(run_config, role, given.get(role), (columns or {}).get(role)) for role in COLUMN_ROLES}
    original_name = original or loaded.original
    before = None
    if original_name:
        opened = open_model(original_name, device, trust_remote_code, dtype)
        before = (opened.model, opened.tokenizer)
    return chosen.run(EvalContext(loaded, Path(out), settings, inputs, resolved, before, original_name,
                                  {role: m for role, m in maps.items() if m}))
