"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models"): memorisation of
raw text, the copyright case, on whatever texts the user has.

- VerbMem: each forget text is cut into windows of `prefix_tokens` + `continuation_tokens` tokens (MUSE:
  32 + 128); the model continues each prefix greedily and the continuation is scored by ROUGE-L F1 against
  the true one. Also on the retain texts when given (what must stay).
- KnowMem: question/answer pairs about the forget (and retain) texts, ROUGE-L F1 of the greedy answers.
- PrivLeak: membership attacks' AUC of forget against held-out texts (Min-K% by default, as MUSE), compared
  with a retain model's AUC on the same sets (its --retain-logs, an earlier muse evaluation of it), MUSE's
  definition (mia.privacy_leakage).

Input: plain files (`--forget book.txt [--retain other.txt] [--holdout unseen.txt] [--qa qa.jsonl]
[--retain-qa qa.jsonl]`) or a copy of MUSE's own data folder (`--muse-dir data/news`: verbmem/forget.json,
knowmem/forget_qa.json and retain_qa.json, privleak/forget.json and holdout.json, raw/retain1.txt). Every
figure is given for the original model (before) and the unlearned one (after) when the original is known.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ...data import Example, load_examples
from ...errors import require
from ...methods.params import Param
from .. import attacks as attack_family
from .. import mia
from ..probes import generate, generate_from_ids
from ..report import SUMMARY, prepare_out, read_json_file, table, title
from ..text_metrics import rouge_l_f1
from .base import EvalContext, Need, Suite, register_suite

LOG = "muse_log.json"
FIGURES = (("verbmem_forget", "VerbMem forget"), ("verbmem_retain", "VerbMem retain"),
           ("knowmem_forget", "KnowMem forget"), ("knowmem_retain", "KnowMem retain"))


@register_suite
class MuseSuite(Suite):
    name = "muse"
    summary = "memorisation of raw text (MUSE): VerbMem, KnowMem and PrivLeak on your own texts"
    needs = (Need("forget", "forget texts (.txt passages, .json/.jsonl with text)", from_run=True),
             Need("retain", "retain texts, for VerbMem on what must stay", from_run=True),
             Need("holdout", "texts the model never saw, for the membership attacks and PrivLeak"),
             Need("qa", "question/answer pairs about the forget texts (KnowMem), .jsonl"),
             Need("retain_qa", "question/answer pairs about the retain texts (KnowMem), .jsonl"),
             Need("retain_logs", "a retain model's muse evaluation directory (PrivLeak)"),
             Need("muse_dir", "a copy of MUSE's data folder for one corpus (e.g. data/news)"))
    options = (Param("prefix_tokens", 32, "tokens of each forget text given as the prompt", "MUSE", low=1),
               Param("continuation_tokens", 128, "tokens of true continuation scored (and generated)", "MUSE",
                     low=1),
               Param("attacks", "min_k", "membership attacks, comma-separated (" + ", ".join(attack_family.ATTACKS)
                     + ")", "MUSE: min_k"))

    def check_inputs(self, data: dict) -> None:
        if data.get("muse_dir"):
            muse_files(Path(data["muse_dir"]))
        for need in ("retain_logs",):
            if data.get(need):
                read_json_file(Path(data[need]) / SUMMARY, "the retain model's muse summary")

    def run(self, context: EvalContext) -> dict:
        started = time.time()
        prepare_out(context.out)
        sets = muse_sets(context.data, context.options, context.loaded.tokenizer, context.settings.max_samples,
                         context.columns)
        attacks = attack_family.check_attacks(context.options["attacks"].split(","))
        models = {"after": (context.loaded.model, context.loaded.tokenizer)}
        if context.original is not None:
            models = {"before": context.original, **models}
        summary = {"suite": self.name, "model": context.loaded.source, "dtype": context.loaded.dtype,
                   "sets": {name: len(items) for name, items in sets.items()}}
        log = {}
        for stage, (model, tokenizer) in models.items():
            summary[stage], log[stage] = score_stage(model, tokenizer, sets, attacks, context.settings,
                                                     context.options["continuation_tokens"], stage, context.original)
        if context.data.get("retain_logs") and "mia" in summary["after"]:
            retain = read_json_file(Path(context.data["retain_logs"]) / SUMMARY, "the retain model's muse summary")
            retain_auc = retain["after"].get("mia", {})
            summary["privleak"] = {name: mia.privacy_leakage(auc, retain_auc[name])
                                   for name, auc in summary["after"]["mia"].items() if name in retain_auc}
            summary["retain_auc"] = retain_auc
        return self.finish(context, summary, log, LOG, started)

    def table(self, summary: dict) -> str:
        stages = [s for s in ("before", "after") if s in summary]
        rows = [[label, *(summary[s].get(key) for s in stages)] for key, label in FIGURES
                if any(key in summary[s] for s in stages)]
        for name in summary[stages[-1]].get("mia", {}):
            rows.append([f"MIA AUC ({name})", *(summary[s].get("mia", {}).get(name) for s in stages)])
        for name, value in summary.get("privleak", {}).items():
            rows.append([f"PrivLeak % ({name})", *([None] * (len(stages) - 1)), value])
        return f"{title(summary, 'MUSE')}\n\n{table(['figure', *stages], rows)}"

    def chart(self, summary: dict) -> list[dict]:
        stages = {"before": "original", "after": "unlearned"}
        return [{"figure": label, "model": model, "value": summary[stage][key]}
                for stage, model in stages.items() if stage in summary
                for key, label in FIGURES if key in summary[stage]]


# ---------------------------------------------------------------- inputs

def muse_files(root: Path) -> dict[str, Path]:
    """The files of MUSE's layout that are present (verbmem at least)."""
    names = {"verbmem": "verbmem/forget.json", "qa": "knowmem/forget_qa.json", "retain_qa": "knowmem/retain_qa.json",
             "privleak_forget": "privleak/forget.json", "holdout": "privleak/holdout.json",
             "retain": "raw/retain1.txt"}
    require(root.is_dir(), f"--muse-dir {root} is not a directory", "name MUSE's data folder of one corpus, e.g. data/news")
    found = {key: root / rel for key, rel in names.items() if (root / rel).is_file()}
    require("verbmem" in found, f"{root} has no verbmem/forget.json, so it is not MUSE's data layout",
            "name the folder that holds verbmem/, knowmem/, privleak/ and raw/ (e.g. MUSE's data/news)")
    return found


def muse_sets(data: dict, options: dict, tokenizer, max_samples: int, columns: dict | None = None) -> dict[str, list]:
    """{set name: items}: verbmem_* (prefix ids, true continuation), knowmem_* (Examples), mia_* (Examples).
    `columns`: role -> column map of the forget / retain files given (not of MUSE's own files)."""
    columns = columns or {}
    prefix, continuation = options["prefix_tokens"], options["continuation_tokens"]
    sets: dict[str, list] = {}
    muse = muse_files(Path(data["muse_dir"])) if data.get("muse_dir") else {}
    if "verbmem" in muse:
        rows = json.loads(muse["verbmem"].read_text(encoding="utf-8"))
        sets["verbmem_forget"] = [(tokenizer(r["prompt"])["input_ids"], r["gt"]) for r in rows][:max_samples]
    else:
        source = data.get("forget")
        require(bool(source), "the muse suite needs forget texts", "pass --forget FILE (or --muse-dir DIR)")
        sets["verbmem_forget"] = windows(source, "forget", tokenizer, prefix, continuation,
                                         columns.get("forget"))[:max_samples]
    retain = data.get("retain") or muse.get("retain")
    if retain:
        sets["verbmem_retain"] = windows(str(retain), "retain", tokenizer, prefix, continuation,
                                         None if muse.get("retain") == retain else columns.get("retain"))[:max_samples]
    for name, key in (("knowmem_forget", "qa"), ("knowmem_retain", "retain_qa")):
        source = data.get(key) or muse.get(key)
        if source:
            examples = _qa(str(source), key)
            sets[name] = examples[:max_samples]
    holdout = data.get("holdout") or muse.get("holdout")
    if holdout:
        members = muse.get("privleak_forget") or data.get("forget")
        sets["mia_forget"] = _texts(str(members), "forget",
                                    None if muse.get("privleak_forget") else columns.get("forget"))[:max_samples]
        sets["mia_holdout"] = _texts(str(holdout), "holdout")[:max_samples]
        require(len(sets["mia_holdout"]) > 0, f"the held-out set {holdout} is empty", "give at least one text")
    return sets


def windows(source: str, role: str, tokenizer, prefix: int, continuation: int,
            columns: str | None = None) -> list[tuple[list[int], str]]:
    """Consecutive prefix + continuation windows of every text, as (prefix token ids, continuation text)."""
    pairs = []
    size = prefix + continuation
    longest = 0
    for text in (ex.answer if not ex.is_qa else f"{ex.prompt} {ex.answer}" for ex in load_examples(source, role, columns)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        longest = max(longest, len(ids))
        for start in range(0, len(ids) - size + 1, size):
            window = ids[start:start + size]
            pairs.append((window[:prefix], tokenizer.decode(window[prefix:], skip_special_tokens=True)))
    require(bool(pairs), f"no {role} text in {source} is {size} tokens long ({prefix} prefix + {continuation} "
                         f"continuation); the longest has {longest}",
            f"lower --prefix-tokens / --continuation-tokens (e.g. --continuation-tokens {max(1, longest - prefix)}), "
            f"or give longer texts")
    return pairs


def _qa(source: str, role: str) -> list[Example]:
    examples = _read_list(source, role)
    bad = [i for i, ex in enumerate(examples) if not ex.is_qa]
    require(not bad, f"{role} file {source}: record {bad[0] + 1 if bad else 0} is not a question/answer pair",
            "give question and answer fields in every record")
    return examples


def _texts(source: str, role: str, columns: str | None = None) -> list[Example]:
    """Texts to score whole (membership attacks read every token of them)."""
    return [Example(answer=ex.answer if not ex.is_qa else f"{ex.prompt} {ex.answer}") for ex in _read_list(source, role, columns)]


def _read_list(source: str, role: str, columns: str | None = None) -> list[Example]:
    """A file through core.data, or MUSE's JSON lists (of strings, or of question/answer objects)."""
    path = Path(source)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list) and data and isinstance(data[0], str):
            return [Example(answer=text) for text in data]
        if isinstance(data, list) and data and isinstance(data[0], dict) and "question" in data[0]:
            return [Example(answer=r["answer"], prompt=r["question"]) for r in data]
    return load_examples(source, role, columns)


# ---------------------------------------------------------------- scoring

def score_stage(model, tokenizer, sets: dict, attacks: list[str], settings, continuation: int, stage: str,
                original=None):
    figures, log = {}, {}
    for name in ("verbmem_forget", "verbmem_retain"):
        if name in sets:
            prompts = [ids for ids, _ in sets[name]]
            truths = [text for _, text in sets[name]]
            generations = generate_from_ids(model, tokenizer, prompts, continuation, settings.batch_size,
                                            f"{stage} {name}")
            scores = rouge_l_f1(generations, truths)
            figures[name], log[name] = float(np.mean(scores)), {"rougeL_f1": scores, "generated_text": generations}
    for name in ("knowmem_forget", "knowmem_retain"):
        if name in sets:
            examples = sets[name]
            generations = generate(model, tokenizer, [ex.prompt for ex in examples], settings.max_new_tokens,
                                   settings.batch_size, f"{stage} {name}")
            scores = rouge_l_f1(generations, [ex.answer for ex in examples])
            figures[name], log[name] = float(np.mean(scores)), {"rougeL_f1": scores, "generated_text": generations}
    if "mia_forget" in sets:
        results = attack_family.membership(model, tokenizer, sets["mia_forget"], sets["mia_holdout"], attacks,
                                           settings.batch_size, reference=original)
        figures["mia"] = {name: r["auc"] for name, r in results.items()}
        log["mia"] = {name: {"forget": r["forget"], "holdout": r["holdout"]} for name, r in results.items()}
    return figures, log
