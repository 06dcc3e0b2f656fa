"""What a long benchmark has measured, kept beside its report so that it outlives the machine.

A mini-TOFU run takes longer than one session's machine lives, and its cache of models (gigabytes, under
--runs-dir) goes with the machine. The figures it measured do not need to: each method's per-epoch points, the
target's and retain model's, and each stage's time are written to record.json in the ledger's folder
(committed with the report) as soon as they exist, and so is the retain model's evaluation log, all that
Forget Quality needs of that model (a few hundred KB). A rerun on a fresh machine takes them from there and
measures only what is missing: it never learns a retain model again, learns the target again only if a method
is left, and says how the new target compares with the one the recorded methods started from.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

# Plan settings a record may differ in: which methods a plan runs only decides what is measured next.
NOT_SETTINGS = ("methods",)
# Where a stage's seconds were measured before the record said so: every stage until then ran on one machine.
UNRECORDED_MACHINE = "not recorded (before 2026-12-07: one 2-core AVX2 machine)"


def machine() -> str:
    """The machine seconds are measured on, as a stage records it: CPU model, cores and widest vector unit.
    Seconds (and their ratios, where the vector unit differs) compare only within one machine."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    unit = next((f for f in ("avx512_bf16", "avx512f", "avx2", "neon") if f in flags), platform.machine())
    return f"{model}, {os.cpu_count()} cores, {unit}"


class SettingsChanged(SystemExit):
    """The record was measured under other settings: mixing the two would make a table of two protocols."""


class Ledger:
    def __init__(self, folder: Path):
        self.folder, self.path = folder, folder / "record.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("plans", {})
        self.data.setdefault("stages", {})
        self.data.setdefault("wall_seconds", 0.0)
        for stage in self.data["stages"].values():
            stage.setdefault("machines", {UNRECORDED_MACHINE: {k: stage[k] for k in ("wall", "cpu", "invocations")}})

    def hold(self) -> None:
        """Keep other invocations off this record while this one measures into it: each saves the whole
        record, so two at once would lose each other's figures. Released when the process ends."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = (self.folder / ".lock").open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            raise SystemExit(f"another invocation (pid {self._lock.read().strip() or '?'}) is measuring into "
                             f"{self.folder}; wait for it to end, or pass --results to another folder") from None
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()))
        self._lock.flush()

    # ------------------------------------------------------------ plans
    def plan(self, settings: dict) -> dict:
        """The record of the plan with these settings ({} if none); refuses one measured under others."""
        settings = _plain(settings)
        record = self.data["plans"].get(_key(settings))
        if record is None:
            return {}
        changed = sorted(k for k in set(settings) | set(record["plan"]) if k not in NOT_SETTINGS
                         and settings.get(k) != record["plan"].get(k))
        if changed:
            raise SettingsChanged(
                f"{self.path} records plan {_key(settings)!r} measured with other settings ({', '.join(changed)}); "
                "rerun with those settings to go on with it, or pass --results to another folder to start anew")
        return record

    def keep_models(self, settings: dict, target: dict, retain: dict, weights: str) -> str | None:
        """Record the target's and retain model's points and the target's weights (a digest), the first time.
        A fresh machine learns the target again (the recorded methods started from the first one): that is
        noted, with the figures that changed, and returned; the same weights seen again are not news."""
        self.plan(settings)
        record = self.data["plans"].setdefault(_key(settings), {"curves": {}, "diverged": {}, "relearned": []})
        record["plan"] = _plain(settings)
        if "target" not in record:
            record.update(target=target, retain=retain, target_weights=weights, measured=_today())
            self.save()
            return None
        if weights in (record["target_weights"], *(n["target_weights"] for n in record["relearned"])):
            return None
        changed = {figure: [record["target"][figure], target[figure]] for figure in ("mu", "forget_prob", "fq")
                   if record["target"].get(figure) != target.get(figure)}
        record["relearned"].append({"date": _today(), "target_weights": weights, "target": changed})
        self.save()
        return (f"{settings['name']}: the target was learned again; its figures against the record's (then, now): "
                + (json.dumps(changed) if changed else "identical"))

    def keep_curve(self, settings: dict, method: str, points: list[dict], diverged: str | None) -> None:
        """The method's points under the plan; a curve measured before (another machine's) is kept aside."""
        record = self.data["plans"][_key(settings)]
        record["plan"] = _plain(settings)
        if method in record["curves"]:
            record.setdefault("superseded", {}).setdefault(method, []).append(
                {"points": record["curves"][method], "measured": record.get("method_measured", {}).get(method),
                 "replaced": _today()})
        record["curves"][method] = points
        if diverged:
            record["diverged"][method] = diverged
        record.setdefault("method_measured", {})[method] = _today()
        self.save()

    def result(self, settings: dict, methods: tuple[str, ...]) -> dict | None:
        """The plan's result as run_plan returns it, from the record alone (None before its models are)."""
        record = self.plan(settings)
        if "target" not in record:
            return None
        return {"plan": _plain(settings), "target": record["target"], "retain": record["retain"],
                "curves": {m: record["curves"][m] for m in methods if m in record["curves"]},
                "diverged": record["diverged"], "relearned": record["relearned"]}

    def points(self, settings: dict):
        """Every recorded point of the plan, as (name, point): ("target", p), ("retain", p), ((method, epoch), p).
        The points are the record's own: change one, then save()."""
        record = self.plan(settings)
        for name in ("target", "retain"):
            if name in record:
                yield name, record[name]
        for method, curve in record.get("curves", {}).items():
            for point in curve:
                yield (method, point["epoch"]), point

    def retain_eval(self, settings: dict) -> Path | None:
        """The recorded evaluation of the plan's retain model (an eval output folder), if any."""
        folder = self._retain_folder(settings)
        return folder if all((folder / name).is_file() for name in _retain_eval_files()) else None

    def keep_retain_eval(self, settings: dict, evaluated: Path) -> Path:
        """Copy the retain model's evaluation into the ledger (summary last: it marks the copy complete)."""
        from core.runs import write_text_atomic

        folder = self._retain_folder(settings)
        for name in _retain_eval_files():
            write_text_atomic(folder / name, (evaluated / name).read_text())
        return folder

    def _retain_folder(self, settings: dict) -> Path:
        """Per plan that learned the retain model (a plan may reuse another's learned models)."""
        learned = {**settings, "name": settings.get("learned_in") or settings["name"]}
        return self.folder / _key(learned) / "retain-eval"

    # ------------------------------------------------------------ time
    def add_stage(self, key: str, wall: float, cpu: float, steps: int | None = None) -> None:
        """Wall and CPU seconds per stage, summed over the invocations that ran it, in all and per machine; with
        `steps` (a run's optimizer steps in this invocation), those too and how many invocations counted them,
        so a stage whose every invocation counted its steps gives its seconds per step exactly."""
        stage = self.data["stages"].setdefault(key, {"wall": 0.0, "cpu": 0.0, "invocations": 0, "machines": {}})
        for total in (stage, stage["machines"].setdefault(machine(), {"wall": 0.0, "cpu": 0.0, "invocations": 0})):
            total["wall"] = round(total["wall"] + wall, 1)
            total["cpu"] = round(total["cpu"] + cpu, 1)
            total["invocations"] += 1
            if steps is not None:
                total["steps"] = total.get("steps", 0) + steps
                total["counted"] = total.get("counted", 0) + 1
        self.save()

    def add_wall(self, seconds: float) -> float:
        self.data["wall_seconds"] = round(self.data["wall_seconds"] + seconds, 1)
        self.save()
        return self.data["wall_seconds"]

    def save(self) -> None:
        from core.runs import write_text_atomic

        write_text_atomic(self.path, json.dumps(self.data, indent=1))


def _retain_eval_files() -> tuple[str, ...]:
    """What Forget Quality and PrivLeak read of a retain model's evaluation (read_eval_output), summary last."""
    from core.evaluation.report import SUMMARY
    from core.evaluation.suites.tofu import AGGREGATED_LOG

    return AGGREGATED_LOG, SUMMARY


def _key(settings: dict) -> str:
    """A plan's record, per weights dtype of its evaluations (as the cache keeps them apart)."""
    return f"{settings['name']}@{settings['eval_dtype']}"


def _plain(settings: dict) -> dict:
    """As JSON keeps them (tuples become lists), so that settings compare equal with their record."""
    return json.loads(json.dumps(settings))


def _today() -> str:
    return time.strftime("%Y-%m-%d")
