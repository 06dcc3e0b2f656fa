"""Does each artifact behave like the PyTorch model, and has it still forgotten?

For a fixed set of forget and retain prompts (the first examples of the run's own sets), every runner
gives: greedy tokens (compared with the unlearned PyTorch model), the logits of the first generated
position, answer-token NLL, and ROUGE-L recall of its greedy answer against the true answer. The forget
scores are then placed between the unlearned PyTorch model and the original: a format whose forget NLL
falls back toward the original's has recovered what was forgotten, and gets a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from core.data import encode_examples, run_examples
from core.errors import UnlearnError
from core.losses import IGNORE_INDEX
from core.recovery import recovery as nll_recovery

from .runtime import Runner, answer_nll

GREEDY_TOKENS = 32
TEXT_PROMPT_TOKENS = 16     # raw-text examples: continue from their first tokens
RECOVERY_WARNING = 0.25     # warn when a format undoes a quarter or more of the forget-NLL gain
ROUGE_WARNING = 0.10        # ... or its answers regain this much ROUGE-L recall toward the original's
RETAIN_DAMAGE = 0.5         # warn when a format raises the retain NLL by this many nats (probability x0.61)
# A greedy run may part from PyTorch's where PyTorch itself barely prefers its token: within this many logits
# of the other token, float16 rounding decides a tie, not the export (seen on tiny random test models).
NEAR_TIE_LOGITS = 0.05
PATH_TOP_K = 5              # the reference's top logits kept per greedy position, to tell a near-tie


@dataclass(frozen=True)
class Probe:
    role: str               # "forget" or "retain"
    ids: list[int]          # prompt + answer
    answer_start: int       # first answer position in ids
    answer_text: str

    @property
    def prompt(self) -> list[int]:
        return self.ids[:self.answer_start]


def build_probes(config: dict, tokenizer, per_set: int, forget: str | None = None,
                 retain: str | None = None) -> list[Probe]:
    """The first `per_set` examples of the run's forget and retain sets (or the files given instead)."""
    sources = {"forget": forget or config.get("forget"), "retain": retain or config.get("retain")}
    probes = []
    for role, path in sources.items():
        if not path:
            continue
        try:
            examples = run_examples(config, role, path)[:per_set]
        except UnlearnError as exc:
            raise UnlearnError(f"parity needs the run's {role} set: {exc.problem}",
                               f"pass --{role} FILE with the {role} examples, or --no-parity") from None
        encoded = encode_examples(tokenizer, examples, config.get("max_length", 256), role)
        for item, index in zip(encoded.items, encoded.kept):
            probes.append(Probe(role, item.input_ids, _answer_start(item.labels), examples[index].answer))
    return probes


def _answer_start(labels: list[int]) -> int:
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    if first == 0:  # raw text: the whole passage is the answer, so keep a few tokens as its prompt
        first = max(1, min(TEXT_PROMPT_TOKENS, len(labels) // 2))
    return first


# ---------------------------------------------------------------- one runner

def run_probes(runner: Runner, probes: list[Probe], n_tokens: int = GREEDY_TOKENS,
               forced: list[list[int]] | None = None, tick=None) -> dict:
    """Raw outputs of one runner: greedy tokens, first-step logits, answer NLL per probe; with `forced`
    (the reference's greedy tokens per probe) also the runner's argmax at each of those positions when
    fed the reference's own prefix; without it (the reference itself) its top logits along its greedy run.
    `tick` is called after each probe (the progress bar)."""
    tokens, first_logits, nll, counts, forced_argmax, path_top = [], [], [], [], [], []
    for i, probe in enumerate(probes):
        logits = runner.prefill(probe.ids)
        total, n = answer_nll(logits, probe.ids, probe.answer_start)
        nll.append(total)
        counts.append(n)
        first_logits.append(logits[probe.answer_start - 1])
        tokens.append(runner.greedy(probe.prompt, n_tokens))
        if forced is not None:
            forced_argmax.append([int(t) for t in np.argmax(_path_logits(runner, probe.prompt, forced[i]), axis=-1)])
        else:
            path_top.append(_top_logits(_path_logits(runner, probe.prompt, tokens[-1])))
        if tick:
            tick()
    raw = {"tokens": tokens, "first_logits": first_logits, "nll": nll, "counts": counts}
    if forced is not None:
        raw["forced_argmax"] = forced_argmax
    else:
        raw["path_top"] = path_top
    return raw


def _path_logits(runner: Runner, prompt: list[int], continuation: list[int]) -> np.ndarray:
    """The runner's next-token logits at every position of `continuation`, given the prompt and the
    continuation's own earlier tokens (one prefill, no sampling)."""
    return runner.prefill(prompt + continuation[:-1])[len(prompt) - 1:]


def _top_logits(logits: np.ndarray) -> list[dict[int, float]]:
    """Per position, the PATH_TOP_K largest logits by token id."""
    top = np.argsort(logits, axis=-1)[:, ::-1][:, :PATH_TOP_K]
    return [{int(t): float(row[t]) for t in ids} for row, ids in zip(logits, top)]


def summarise(raw: dict, reference: dict, probes: list[Probe], tokenizer) -> dict:
    """Scores of one runner against the reference (the unlearned PyTorch model)."""
    prefixes = [_prefix_agreement(a, b) for a, b in zip(raw["tokens"], reference["tokens"])]
    diffs = [float(np.abs(a - b).max()) for a, b in zip(raw["first_logits"], reference["first_logits"])]
    result = {"identical_runs": sum(a == 1.0 for a in prefixes), "runs": len(prefixes),
              "token_agreement": round(_forced_agreement(raw, reference), 4),
              "greedy_prefix_agreement": round(float(np.mean(prefixes)), 4),
              "first_logits_max_abs_diff": max(diffs)}
    if "path_top" in reference and "forced_argmax" in raw:
        per_run = _flips(raw["forced_argmax"], reference)
        result["flips"], result["near_tie_flips"] = (sum(run[k] for run in per_run) for k in (0, 1))
        # a parted run is excused only by a flip of its own, every one a near-tie (a greedy run may also part
        # where the runtime's step-by-step decoding differs from its prefill: that is never excused)
        result["near_tie_runs"] = sum(a < 1.0 and 0 < near == flips for a, (flips, near) in zip(prefixes, per_run))
    each = {}
    for role in ("forget", "retain"):
        picked = [i for i, p in enumerate(probes) if p.role == role]
        if picked:
            rouge = _rouge_recalls(raw, picked, probes, tokenizer)
            result[f"{role}_nll"] = round(sum(raw["nll"][i] for i in picked) / sum(raw["counts"][i] for i in picked), 4)
            result[f"{role}_rougeL"] = round(float(np.mean(rouge)), 4)
            # what the figures are means of, so that a recovery gets an interval over the prompts (the audit)
            each[role] = {"nll": [raw["nll"][i] for i in picked], "tokens": [raw["counts"][i] for i in picked],
                          "rougeL": rouge}
    if each:
        result["per_example"] = each
    return result


def _forced_agreement(raw: dict, reference: dict) -> float:
    """Share of positions where both pick the same next token on the same context (the reference's greedy
    run), as llama.cpp's `perplexity --kl-divergence` reports "Same top p". A runner scored without
    `forced` is the reference itself: its greedy tokens are its forced argmax."""
    ours = raw.get("forced_argmax", raw["tokens"])
    theirs = reference.get("forced_argmax", reference["tokens"])
    pairs = [(a, b) for run_a, run_b in zip(ours, theirs) for a, b in zip(run_a, run_b)]
    return sum(a == b for a, b in pairs) / max(len(pairs), 1)


def _flips(forced_argmax: list[list[int]], reference: dict) -> list[tuple[int, int]]:
    """Per run: positions of the reference's greedy run where the runner picks another token, and how many
    of them are near-ties (the runner's token within NEAR_TIE_LOGITS of the reference's own choice)."""
    per_run = []
    for ours, theirs, top in zip(forced_argmax, reference["tokens"], reference["path_top"]):
        flipped = [(a, b, logits) for a, b, logits in zip(ours, theirs, top) if a != b]
        near = sum(a in logits and logits[b] - logits[a] <= NEAR_TIE_LOGITS for a, b, logits in flipped)
        per_run.append((len(flipped), near))
    return per_run


def _prefix_agreement(tokens: list[int], reference: list[int]) -> float:
    """Share of the reference's greedy tokens reproduced before the first divergence (after it, a greedy
    run follows a different context, so later matches say nothing)."""
    same = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        same += 1
    return same / max(len(reference), 1)


def _rouge_recalls(raw: dict, picked: list[int], probes: list[Probe], tokenizer) -> list[float]:
    """ROUGE-L recall of each picked probe's greedy answer (up to its end of sequence) against its true answer."""
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs one INFO line per scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = []
    for i in picked:
        tokens = raw["tokens"][i]
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
        answer = tokenizer.decode(tokens, skip_special_tokens=True)
        scores.append(float(scorer.score(probes[i].answer_text, answer)["rougeL"].recall))
    return scores


# ---------------------------------------------------------------- the report

def forgetting_check(formats: dict[str, dict], unlearned: dict, original: dict) -> tuple[dict, list[str]]:
    """Where each format's forget scores sit between the unlearned model (0) and the original (1)."""
    checks, warnings = {}, []
    rouge_drop = original.get("forget_rougeL", 0) - unlearned.get("forget_rougeL", 0)
    for name, scores in formats.items():
        if "forget_nll" not in scores:
            continue
        recovery = nll_recovery(original.get("forget_nll", 0), unlearned["forget_nll"], scores["forget_nll"], "nll")
        rouge_regain = scores["forget_rougeL"] - unlearned["forget_rougeL"]
        recovered = (recovery is not None and recovery >= RECOVERY_WARNING) or \
                    (rouge_drop > 0 and rouge_regain >= ROUGE_WARNING)
        checks[name] = {"forget_nll": scores["forget_nll"], "forget_rougeL": scores["forget_rougeL"],
                        "nll_recovery": None if recovery is None else round(recovery, 4),
                        "rougeL_regain": round(rouge_regain, 4), "recovers_forgotten": recovered}
        if recovered:
            warnings.append(f"{name} recovers forgotten knowledge: forget NLL {scores['forget_nll']:.3f} vs "
                            f"{unlearned['forget_nll']:.3f} unlearned / {original['forget_nll']:.3f} original, "
                            f"ROUGE-L {scores['forget_rougeL']:.3f} vs {unlearned['forget_rougeL']:.3f} / "
                            f"{original['forget_rougeL']:.3f}")
    return checks, warnings


def retain_damage_check(formats: dict[str, dict], unlearned: dict, base_quantization: str | None) -> list[str]:
    """Warnings for the formats that damage what the model kept: retain NLL up by RETAIN_DAMAGE or more.
    After QLoRA a quantised format quantises a second time (the base was 4- or 8-bit while the adapter
    trained), which a small model can take badly: say so."""
    warnings = []
    for name, scores in formats.items():
        if "retain_nll" not in scores or "retain_nll" not in unlearned:
            continue
        rise = scores["retain_nll"] - unlearned["retain_nll"]
        if rise < RETAIN_DAMAGE:
            continue
        twice = (f"; the base was already held in {base_quantization} while the adapter trained, so this format "
                 "quantises it a second time" if base_quantization else "")
        warnings.append(f"{name} damages what the model kept: retain NLL {scores['retain_nll']:.3f} vs "
                        f"{unlearned['retain_nll']:.3f} unlearned (+{rise:.2f} nats){twice}; ship a less "
                        "quantised variant (q8_0, f16, fp16)")
    return warnings


def goal_status(goal: tuple[bool, float] | None, scores: dict) -> dict | None:
    """Whether an artifact meets its format's goal (export.formats.ExportFormat.goals): (identical greedy runs
    required, minimum token agreement)."""
    if goal is None:
        return None
    identical, agreement = goal
    if not identical:
        return {"goal": f"token agreement >= {agreement:.0%}", "met": scores["token_agreement"] >= agreement}
    excused = scores.get("near_tie_runs", 0)
    status = {"goal": f"identical {GREEDY_TOKENS}-token greedy runs, but for near-ties "
                      f"(<= {NEAR_TIE_LOGITS} logits apart in PyTorch)",
              "met": scores["identical_runs"] + excused == scores["runs"]}
    if excused:
        status["note"] = f"{excused} run(s) part from PyTorch at near-ties only"
    return status
