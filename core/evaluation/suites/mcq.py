"""Multiple-choice knowledge (WMDP / MMLU style), scored by lm-evaluation-harness: accuracy on a forget topic
(should fall) and on general knowledge (should stay), for the original and the unlearned model.

Data: JSON Lines, one question per line: {"question": str, "choices": [str, ...], "answer": index of the right
choice}. lm-eval runs them as tasks defined over those local files (no download): its Hugging Face model
class wraps the models already loaded, and its loglikelihood scoring picks the most likely choice.

Formats (`--format`): `letters`, WMDP's and MMLU's prompt (the question, the choices listed as A., B., ...,
"Answer:"; the scored continuation is the letter); `text`, each choice's own text scored as the answer to
"Question: ... Answer:" (what a small model can show knowledge with: its letter accuracy is near chance).
lm-eval's `acc` (the highest log-likelihood) and `acc_norm` (per byte of the choice) are both reported.

The shipped assets/mcq/ sets are built from the bundled TOFU slice by scripts/build_tofu_mcq.py: every
question of the forget01 authors (198-199) and of retain authors 0-1 (those the demo model learned), its
paraphrased true answer among its five perturbed answers."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ...errors import UnlearnError, require
from ...methods.params import Param
from ..report import prepare_out, table, title
from .base import EvalContext, Need, Suite, register_suite

LOG = "mcq_log.json"
LETTERS = "ABCDEFGHIJ"
PROMPTS = {
    "letters": dict(doc_to_text="{{question.strip()}}\n{% for c in choices %}" + "{{ '" + LETTERS + "'[loop.index0] }}. "
                                "{{ c }}\n{% endfor %}Answer:",
                    doc_to_choice="{{ " + str(list(LETTERS)) + "[:choices|length] }}"),
    "text": dict(doc_to_text="Question: {{question.strip()}}\nAnswer:", doc_to_choice="{{choices}}"),
}


@register_suite
class McqSuite(Suite):
    name = "mcq"
    summary = "multiple-choice accuracy on a forget topic and general knowledge, through lm-evaluation-harness"
    needs = (Need("forget", "forget-topic multiple-choice questions (.jsonl: question, choices, answer)",
                  required=True),
             Need("retain", "general-knowledge multiple-choice questions (same format)"))
    options = (Param("format", "letters", "letters (WMDP/MMLU: choices listed, the letter scored) or text (each "
                                          "choice's text scored)", "WMDP, MMLU", choices=("letters", "text")),)
    packages = {"lm_eval": "lm-eval"}

    def check_inputs(self, data: dict) -> None:
        missing = self.available()
        require(missing is None, str(missing), "run: pip install lm-eval==0.4.13")
        for role in ("forget", "retain"):
            if data.get(role):
                read_mcq(data[role], role)

    def run(self, context: EvalContext) -> dict:
        started = time.time()
        out = prepare_out(context.out)
        sets = {role: str(Path(context.data[role]).resolve()) for role in ("forget", "retain") if context.data.get(role)}
        require("forget" in sets, "the mcq suite needs forget-topic multiple-choice questions", "pass --forget FILE")
        for role, path in sets.items():
            sets[role] = _limited(path, read_mcq(path, role)[:context.settings.max_samples], out, role)
        models = {"after": (context.loaded.model, context.loaded.tokenizer)}
        if context.original is not None:
            models = {"before": context.original, **models}
        summary = {"suite": self.name, "model": context.loaded.source, "dtype": context.loaded.dtype,
                   "format": context.options["format"]}
        log = {}
        for stage, (model, tokenizer) in models.items():
            summary[stage], log[stage] = lm_eval_accuracy(model, tokenizer, sets, context.options["format"],
                                                          context.settings.batch_size)
        return self.finish(context, summary, log, LOG, started)

    def table(self, summary: dict) -> str:
        stages = [s for s in ("before", "after") if s in summary]
        rows = [[f"{role} {metric}", *(summary[s][role][metric] for s in stages)]
                for role in summary[stages[-1]] for metric in ("acc", "acc_norm", "questions")]
        return f"{title(summary, 'mcq')} ({summary['format']} format)\n\n{table(['figure', *stages], rows)}"

    def chart(self, summary: dict) -> list[dict]:
        stages = {"before": "original", "after": "unlearned"}
        return [{"figure": f"{role} accuracy", "model": model, "value": summary[stage][role]["acc"]}
                for stage, model in stages.items() if stage in summary for role in summary[stage]]


def read_mcq(path: str, role: str) -> list[dict]:
    """The rows of a multiple-choice file, each checked: one clear error naming the file, the row and the fix."""
    file = Path(path)
    require(file.is_file(), f"{role} file {path} does not exist", "check the path")
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{role} file {path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{where} is not valid JSON ({exc.msg})", "write one JSON object per line") from None
        require(isinstance(row, dict) and isinstance(row.get("question"), str),
                f"{where} has no question text", 'write {"question": ..., "choices": [...], "answer": N}')
        choices = row.get("choices")
        require(isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices),
                f"{where} needs a list of at least two text choices", 'write "choices": ["...", "..."]')
        require(len(choices) <= len(LETTERS), f"{where} has {len(choices)} choices; at most {len(LETTERS)} are lettered",
                "split the question or drop choices")
        answer = row.get("answer")
        require(isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices),
                f"{where}: answer {answer!r} is not the index of one of its {len(choices)} choices",
                f"give the right choice's position, 0 to {len(choices) - 1}")
        rows.append(row)
    require(bool(rows), f"{role} file {path} holds no questions", "add one JSON object per line")
    return rows


def _limited(path: str, rows: list[dict], out: Path, role: str) -> str:
    """The file lm-eval reads: the given one, or the first --max-samples rows of it written beside the results."""
    if len(rows) == sum(1 for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()):
        return path
    limited = out / f"{role}_questions.jsonl"
    limited.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(limited.resolve())


def lm_eval_accuracy(model, tokenizer, sets: dict, prompt_format: str, batch_size: int) -> tuple[dict, dict]:
    """{role: acc, acc_norm, questions} through lm-eval's HFLM over the loaded model, and per-question logs."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")   # the tasks read local files; nothing is downloaded
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    tasks = [{"task": f"unlearn_mcq_{role}", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": path}},
              "test_split": "test", "output_type": "multiple_choice", "doc_to_target": "{{answer}}",
              "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}], **PROMPTS[prompt_format]}
             for role, path in sets.items()]
    results = simple_evaluate(model=lm, tasks=tasks, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    figures, log = {}, {}
    for role in sets:
        name = f"unlearn_mcq_{role}"
        scores = results["results"][name]
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        figures[role] = {"acc": scores["acc,none"], "acc_norm": scores["acc_norm,none"], "questions": len(samples)}
        log[role] = [{"choice_loglikelihoods": [r[0] for r in s["filtered_resps"]], "answer": s["target"],
                      "correct": bool(s["acc"])} for s in samples]
    return figures, log
