"""The model card's metadata in the Hugging Face Hub's schema (huggingface_hub's ModelCardData): base_model,
license, datasets, tags (with `unlearning`), and a `model-index` whose results are the run's figures: the
training summary's forget/retain NLL, each evaluation suite written into the run (RUN/eval/SUITE), each
exported artifact's parity figures, and each audit attack's largest recovery."""
from __future__ import annotations

from pathlib import Path

from core.models import BUNDLED, DEMO
from core.runs import RunDir, read_json

from .source import RunSource

# Hub ids for the names the run may record instead of one
HUB_IDS = {BUNDLED: "HuggingFaceTB/SmolLM2-135M-Instruct"}
LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}
TOFU_DATASET = "locuslab/TOFU"
TASK = "text-generation"
PARITY_FIGURES = ("token_agreement", "forget_nll", "retain_nll")


def card_data(source: RunSource, manifest: dict, report: dict | None, audit: dict | None):
    """huggingface_hub.ModelCardData for the bundle's README.md."""
    from huggingface_hub import ModelCardData

    base = base_model_id(source)
    formats = [f for f in manifest["formats"] if f != "hf"]
    return ModelCardData(
        model_name=f"{(base or 'model').split('/')[-1]}-unlearned-{source.method}",
        base_model=base, license=_license(source, base), datasets=_datasets(source.config) or None,
        library_name="transformers", pipeline_tag=TASK,
        tags=list(dict.fromkeys(["unlearning", source.method, *(["lora"] if source.is_lora else []), *formats])),
        eval_results=eval_results(source, report, audit) or None)


def front_matter(source: RunSource, manifest: dict, report: dict | None, audit: dict | None) -> str:
    """The card's YAML block, between its --- lines."""
    return "---\n" + card_data(source, manifest, report, audit).to_yaml() + "\n---"


def base_model_id(source: RunSource) -> str | None:
    """The base model as a Hub id: a name the run recorded (bundled -> its Hub id); None for a local folder,
    which the Hub cannot link."""
    given = source.config.get("model") or source.base_model
    given = HUB_IDS.get(given, given)
    if given == DEMO or Path(given).expanduser().exists() or given.startswith(("/", ".", "~")) or given.count("/") != 1:
        return None
    return given


def _license(source: RunSource, base: str | None) -> str:
    """The base model's license: its own card's (a local folder's README.md), a known one, else `other`."""
    readme = Path(source.base_model) / "README.md"
    if readme.is_file():
        from huggingface_hub import ModelCard

        license_ = ModelCard(readme.read_text(encoding="utf-8"), ignore_metadata_errors=True).data.license
        if license_:
            return license_
    return LICENSES.get(base or "", "other")


def dataset_id(spec: str | None) -> str | None:
    """A forget/retain spec as a Hub dataset id: tofu:SPLIT -> locuslab/TOFU, hf:ORG/NAME[:config][@split] ->
    ORG/NAME; a local file has none."""
    if not spec:
        return None
    if spec.startswith("tofu:"):
        return TOFU_DATASET
    if spec.startswith("hf:"):
        return spec[3:].split("@")[0].split(":")[0]
    return None


def _datasets(config: dict) -> list[str]:
    return list(dict.fromkeys(filter(None, (dataset_id(config.get(role)) for role in ("forget", "retain")))))


def _dataset(config: dict, role: str) -> tuple[str, str]:
    """(dataset_type, dataset_name) of the run's forget or retain set."""
    spec = config.get(role) or role
    return dataset_id(spec) or Path(spec).name, f"{role} set ({spec if dataset_id(spec) else Path(spec).name})"


def eval_results(source: RunSource, report: dict | None, audit: dict | None) -> list:
    from huggingface_hub import EvalResult

    results = []

    def add(role: str, metric: str, value, name: str) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            kind, title = _dataset(source.config, role)
            results.append(EvalResult(task_type=TASK, dataset_type=kind, dataset_name=title, metric_type=metric,
                                      metric_value=round(float(value), 4), metric_name=name))

    after = source.summary.get("after", {})
    for role in ("forget", "retain"):
        add(role, f"{role}_nll", after.get(f"{role}_nll"), f"{role} answer NLL after unlearning (training summary)")
    for suite, figures in suite_figures(source.run_dir).items():
        for (role, figure), value in figures.items():
            add(role if role in ("forget", "retain") else "forget", f"{suite}_{role}_{figure}".replace(" ", "_"),
                value, f"{suite} suite: {role} {figure}")
    for artifact, scores in (report or {}).get("formats", {}).items():
        for figure in PARITY_FIGURES:
            role = "retain" if figure.startswith("retain") else "forget"
            add(role, f"{artifact}_{figure}", scores.get(figure), f"{artifact}: {figure.replace('_', ' ')} (parity)")
    for result in (audit or {}).get("results", []):
        add("forget", f"audit_{result['name']}_worst_recovery", result.get("worst_recovery"),
            f"audit {result['name']}: largest recovery ({result['verdict'].split(':')[0]})")
    return results


def suite_figures(run_dir: Path) -> dict[str, dict[tuple[str, str], float]]:
    """{suite: {(set, figure): value}} of the evaluations written into the run (RUN/eval/SUITE/summary.json:
    the unlearned model's `after` figures)."""
    figures = {}
    for path in sorted((RunDir(run_dir).path / "eval").glob("*/summary.json")):
        after = (read_json(path, {}) or {}).get("after", {})
        figures[path.parent.name] = {(role, figure): value for role, values in after.items()
                                     if isinstance(values, dict) for figure, value in values.items()
                                     if isinstance(value, (int, float))}
    return figures

