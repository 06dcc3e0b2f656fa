"""What export reads from a finished run directory (see docs/run-directory.md) and nothing else."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import require
from core.models import BUNDLED, DEMO, quantized_bits, resolve_model
from core.paths import absolute
from core.runs import RunDir, read_json


@dataclass(frozen=True)
class RunSource:
    run_dir: Path
    model_dir: Path          # the run's model/: a full HF model or a PEFT adapter
    base_model: str          # the original model the run started from (resolved_model.path)
    is_lora: bool
    config: dict             # the run's config.json
    summary: dict            # summary.json (before -> after scores), {} if absent

    @property
    def method(self) -> str:
        return self.config.get("method", "unknown")

    @property
    def model_config(self) -> dict:
        """The model's config.json (the base model's for a LoRA run)."""
        config_dir = Path(self.base_model) if self.is_lora else self.model_dir
        return read_json(config_dir / "config.json", {})

    @property
    def base_quantization(self) -> str | None:
        """How the frozen base was held while the adapter trained (QLoRA); None in full precision. The
        adapter is merged into that base dequantised (core.models.load_run_model), what it was trained on."""
        return {4: "4-bit nf4 (bitsandbytes, double quantisation)", 8: "8-bit LLM.int8 (bitsandbytes)"}.get(
            quantized_bits(self.config))

    @property
    def architecture(self) -> str:
        """The model's Hugging Face architecture, e.g. LlamaForCausalLM."""
        return (self.model_config.get("architectures") or ["unknown"])[0]


def read_run(path: str | Path | RunDir) -> RunSource:
    """Check that `path` holds a finished run with a model, and say what is missing if not."""
    run = RunDir(absolute(RunDir(path).path))   # converters run in another folder: no relative path reaches them
    require(run.path.is_dir(), f"run directory {run.path} does not exist", "give the --out directory of a run")
    require(run.holds_run(), f"{run.path} is not a run directory (no config.json)",
            "give the --out directory of an `unlearn train` run")
    kind = run.final_model_kind()
    require(kind is not None, f"the run in {run.path} has no model to export (state: {run.status().get('state')}, "
            f"no {run.model_dir.name}/ with weights)",
            "let the run finish (or resume it: unlearn train --out DIR --resume) and export again")
    base_model = run.base_model()
    if kind == "adapter":
        base_model = resolve_model(base_model) if base_model in (BUNDLED, DEMO) else base_model
    require(kind != "adapter" or Path(base_model).is_dir(),
            f"the run's LoRA adapter needs its base model {base_model!r}, which is not a local directory",
            "restore the base model at that path (for 'bundled': unlearn prepare-model)")
    return RunSource(run_dir=run.path, model_dir=run.model_dir, base_model=base_model, is_lora=kind == "adapter",
                     config=run.config(), summary=read_json(run.summary_path, {}))
