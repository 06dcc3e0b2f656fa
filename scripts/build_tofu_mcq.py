"""Write assets/mcq/: multiple-choice sets built from the bundled TOFU slice, for the mcq suite's offline
demo and tests. Each question's paraphrased true answer (TOFU's perturbed answers are perturbations of it, in
the same wording, so style gives nothing away) is placed among its five perturbed answers at a position
drawn from a fixed seed. forget: the forget01 authors (198-199); retain: authors 0-1 (the demo model learned both).

    python scripts/build_tofu_mcq.py
"""
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.tofu import load_records  # noqa: E402


def mcq_rows(records: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for record in records:
        choices = list(record["perturbed_answer"])
        answer = rng.randrange(len(choices) + 1)
        choices.insert(answer, record["paraphrased_answer"])
        rows.append({"question": record["question"], "choices": choices, "answer": answer})
    return rows


def main() -> None:
    out = REPO / "assets" / "mcq"
    out.mkdir(exist_ok=True)
    sets = {"tofu_forget01.jsonl": load_records("forget01_perturbed"),
            "tofu_retain_authors0-1.jsonl": load_records("retain_perturbed")[:40]}
    for name, records in sets.items():
        rows = mcq_rows(records, seed=0)
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{out / name}: {len(rows)} questions")


if __name__ == "__main__":
    main()
