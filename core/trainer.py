"""The unlearning loop, built on `accelerate`: `accelerate launch` runs this same code on several GPUs
(DDP, or FSDP/DeepSpeed through an accelerate config) or CPU processes, unchanged.

One optimizer step = `grad_accum` micro-batches; each micro-batch holds `batch_size` forget examples and
whatever other views the method reads. Every step updates status.json; every `logging_steps` a line
goes to metrics.jsonl; the run stops cleanly at a step boundary when asked (STOP file, a threading
event, SIGINT/SIGTERM in the CLI) and resumes from its last checkpoint.
"""
from __future__ import annotations

import math
import platform
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from .checkpoint import load_checkpoint, read_trainer_state, save_checkpoint
from .config import PATH_FIELDS, UnlearnConfig
from .data import make_collate
from .errors import UnlearnError
from .methods import StepInputs, get_method
from .methods.base import MethodSetup
from .models import (add_lora, frozen_linears_in_bf16, load_model, load_tokenizer, mixed_precision,
                     model_summary, pick_device, resolve_model, save_model_atomic)
from .reference import OriginalModel, cache_reference_nll
from .runs import RunDir, RunState
from .saliency import SalientNeurons
from .scoring import mean_token_nll
from .views import build_dataset, read_sets


@dataclass
class LoopState:
    """Where the loop is, for callbacks (read it; the trainer writes it)."""
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    epoch: float = 0.0
    tokens: int = 0                 # non-padding tokens through the model this invocation
    started: float = 0.0            # time.time() when the loop began
    params: int = 0
    trainable_params: int = 0
    reference_seconds: float = 0.0  # the cached reference NLL's one-time cost (0 when read back)
    metrics: dict = field(default_factory=dict)   # the last metrics.jsonl line


class Callback:
    """Observe a run without reaching into the trainer (benchmarks, the studio, a user's own logging).
    Every hook gets the LoopState; none may change training."""

    def on_loop_begin(self, state: LoopState) -> None: ...
    def on_step_end(self, state: LoopState) -> None: ...
    def on_log(self, state: LoopState, row: dict) -> None: ...
    def on_checkpoint(self, state: LoopState, path: Path) -> None: ...
    def on_loop_end(self, state: LoopState, outcome: "RunState") -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    state: RunState                # FINISHED or STOPPED
    step: int
    summary: dict = field(default_factory=dict)
    is_main_process: bool = True   # under `accelerate launch`, only rank 0 reports


def train(config: UnlearnConfig, stop_event: threading.Event | None = None, show_progress: bool = True,
          log=print, callbacks: list[Callback] = ()) -> TrainResult:
    """Run (or resume) an unlearning run; raises UnlearnError with a fix for every user-fixable problem."""
    return Trainer(config, stop_event, show_progress, log, callbacks).run()


def config_for_resume(out: str | Path) -> UnlearnConfig:
    """The settings a run was started with, marked for resuming."""
    run = RunDir(out)
    if not run.holds_run():
        raise UnlearnError(f"there is no run to resume in {run.path}", "check --out, or start a new run")
    state = run.status().get("state")
    if state == RunState.FINISHED:
        raise UnlearnError(f"the run in {run.path} already finished: there is nothing to resume",
                           "use its model/ directory, or start again with --overwrite")
    if run.is_active():
        raise UnlearnError(f"the run in {run.path} is still {state}", "wait for it, or stop it with: unlearn stop DIR")
    saved = {k: v for k, v in run.config().items() if k in UnlearnConfig.__dataclass_fields__}
    # The run is where it was found now, whatever --out it was started with (and from which folder).
    return replace(UnlearnConfig.from_dict(saved), out=str(run.path.resolve()), resume=True, overwrite=False)


class Trainer:
    def __init__(self, config: UnlearnConfig, stop_event=None, show_progress=True, log=print, callbacks=()):
        if config.resume:
            config = config_for_resume(config.out)
        self.cfg = config.resolved()
        self.as_given = {name: getattr(config, name) for name in PATH_FIELDS
                         if getattr(config, name) != getattr(self.cfg, name)}
        self.method = get_method(self.cfg.method)(self.cfg.method_params)
        self.saliency = SalientNeurons(self.cfg.salient_modules) if self.cfg.salient_modules else None
        self.saliency_observed = False
        self.stop_event = stop_event or threading.Event()
        self.show_progress = show_progress
        self._log = log
        self.callbacks = list(callbacks)
        self.state = LoopState()
        self.device = pick_device(self.cfg.device)

    # ================================================================ entry point
    def run(self) -> TrainResult:
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.state import AcceleratorState

        cfg = self.cfg
        # accelerate keeps one precision per process; a second run in the same process (the Python API, a
        # benchmark) may want another. The distributed set-up (PartialState) is kept.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            cpu=self.device.type == "cpu", mixed_precision=mixed_precision(cfg.dtype, self.device),
            gradient_accumulation_steps=cfg.grad_accum,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
        self.is_main = self.accelerator.is_main_process
        self.run_dir = self._open_run_dir()
        try:
            return self._run()
        except UnlearnError as exc:
            self._status(RunState.FAILED, error=str(exc))
            raise
        except Exception as exc:
            self._status(RunState.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise

    def _open_run_dir(self) -> RunDir:
        cfg = self.cfg
        RunDir.prepare(cfg.out, cfg.resume, cfg.overwrite, create=False)  # every rank checks
        self.accelerator.wait_for_everyone()
        if self.is_main:
            RunDir.prepare(cfg.out, cfg.resume, cfg.overwrite)
            RunDir(cfg.out).clear_stop()
        self.accelerator.wait_for_everyone()
        return RunDir(cfg.out)

    def _run(self) -> TrainResult:
        from accelerate.utils import set_seed

        cfg, accelerator = self.cfg, self.accelerator
        if self.saliency and accelerator.num_processes > 1:
            raise UnlearnError("--salient-modules (SURE) needs the forget gradient apart from the others, which "
                               "a multi-process run does not keep", "run it in one process, or pass --salient-modules 0")
        set_seed(cfg.seed)
        self._status(RunState.RUNNING, message="reading data")
        raw = read_sets(cfg, self.method)
        self.raw_forget = raw.forget
        source = resolve_model(cfg.model)
        self.tokenizer = load_tokenizer(source, cfg.trust_remote_code)
        self.dataset, self.sets = build_dataset(raw, cfg, self.method, self.tokenizer)
        for encoded in self.sets.values():
            self.log(encoded.describe())
        if not cfg.resume:
            self._write_config(source)

        self._status(RunState.RUNNING, message="loading model")
        model = self._load_model(source)
        self._status(RunState.RUNNING, message="scoring the original model")
        self._prepare_reference(model)
        self._prepare_method(model)
        before = self._score(model) if not cfg.resume else self.run_dir.config().get("before", {})
        if not cfg.resume and self.is_main:
            self.knowledge = self._knowledge_check(model)
            self.run_dir.write_config({**self.run_dir.config(), "before": before, "knowledge_check": self.knowledge})
        elif cfg.resume:
            self.knowledge = self.run_dir.config().get("knowledge_check")

        optimizer = self._optimizer(model)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=cfg.batch_size, shuffle=True,
            collate_fn=make_collate(self.tokenizer.pad_token_id, self.dataset.reference_nll))
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        self.steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        scheduler = _linear_schedule(optimizer, self.total_steps, cfg.warmup_ratio)
        start_step = self._resume(model, optimizer, scheduler) if cfg.resume else 0

        outcome, step = self._loop(model, optimizer, scheduler, loader, start_step)
        self._notify("on_loop_end", outcome)
        return self._finish(model, optimizer, scheduler, outcome, step, before)

    def _notify(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self.state, *args)

    # ================================================================ set-up
    def _write_config(self, source: str) -> None:
        if not self.is_main:
            return
        import accelerate
        import peft
        import transformers

        self.run_dir.write_config({
            **self.cfg.to_dict(),
            "as_given": self.as_given,   # the paths as typed, for display; the fields above are absolute
            "resolved_model": model_summary(source),
            "data": {name: s.report() for name, s in self.sets.items()},
            "method_info": {"name": self.method.name, "paper": self.method.paper, "views": self.method.views},
            "environment": {
                "device": str(self.device), "mixed_precision": self.accelerator.mixed_precision,
                "num_processes": self.accelerator.num_processes, "python": platform.python_version(),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "accelerate": accelerate.__version__,
            },
            "created_at": time.time(),
        })

    def _load_model(self, source: str):
        cfg = self.cfg
        model = load_model(source, torch.float32, cfg.trust_remote_code)
        if cfg.lora and self.accelerator.mixed_precision == "bf16":
            # the frozen base's linear weights in bf16; trained weights stay fp32 (AdamW at 1e-5 would round
            # most bf16 updates away)
            frozen_linears_in_bf16(model)
        model.config.use_cache = False
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(model)
            # With a frozen embedding (LoRA) the checkpointed blocks' inputs need grad, or LoRA layers
            # receive none (open-unlearning issue #178).
            model.enable_input_require_grads()
        if cfg.lora:
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        self.source = source
        return model.to(self.accelerator.device)

    def _prepare_reference(self, model) -> None:
        """Cache NLL_ref of fixed sequences once; set up the KL reference if the method has a KL term."""
        views = {view: self.sets[view].items for view in self.method.cached_reference}
        started = time.perf_counter()
        self.dataset.reference_nll.update(
            cache_reference_nll(model, views, self.tokenizer.pad_token_id, self.run_dir, self.cfg,
                                self.accelerator, is_lora=self.cfg.lora))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.state.reference_seconds = time.perf_counter() - started
        self.original = None
        if self.method.needs_original():
            frozen = None if self.cfg.lora else self._frozen_copy()
            self.original = OriginalModel(model, frozen, self.accelerator.autocast)

    def _frozen_copy(self):
        """Full fine-tuning's original for KL terms and hidden states: a second, frozen copy (+1x weights)."""
        frozen = load_model(self.source, torch.float32, self.cfg.trust_remote_code).to(self.accelerator.device)
        frozen.eval().requires_grad_(False)
        return frozen

    def _prepare_method(self, model) -> None:
        """The method's own set-up (what trains, what it derives from the model); on resume its saved
        state first, so that it makes the same choices as when the run started."""
        checkpoint = self.run_dir.latest_checkpoint() if self.cfg.resume else None
        if checkpoint is not None:
            self.method.load_state_dict(read_trainer_state(checkpoint).get("method_state", {}))

        self.method.prepare(MethodSetup(model, self.cfg, self.log))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if not trainable:
            raise UnlearnError(f"method {self.cfg.method} left no parameter to train",
                               "check its module and layer settings (`unlearn methods`)")

    def _optimizer(self, model) -> torch.optim.Optimizer:
        # As transformers' Trainer (the reference code's): no weight decay on biases and norms.
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # fused: one kernel for all parameters, 5-8x faster than the default loop on CPU (same algorithm)
        return torch.optim.AdamW(groups, lr=self.cfg.lr, fused=True)

    def _resume(self, model, optimizer, scheduler) -> int:
        checkpoint = self.run_dir.latest_checkpoint()
        if checkpoint is None:
            self.log("no checkpoint yet: the run restarts from step 0")
            if self.is_main:   # the lost attempt's lines would be drawn beside the new ones
                self.run_dir.truncate_metrics(0)
            return 0
        state = load_checkpoint(checkpoint, self.accelerator.unwrap_model(model), optimizer, scheduler)
        if self.is_main:
            self.run_dir.truncate_metrics(state["step"])
        self.log(f"resumed from {checkpoint.name}")
        return state["step"]

    # ================================================================ the loop
    def _loop(self, model, optimizer, scheduler, loader, step: int) -> tuple[str, int]:
        from tqdm.auto import tqdm

        cfg, accelerator = self.cfg, self.accelerator
        self.started = time.time()
        self.start_step = step
        self.loop_tokens = 0
        self.step_forget_nlls: list[float] = []
        self.early_stop_reason: str | None = None
        bar = tqdm(total=self.total_steps, initial=step, disable=not (self.is_main and self.show_progress),
                   desc="fine-tuning" if cfg.method == "sft" else f"unlearning ({cfg.method})", unit="step")
        window = _Window()
        params = list(model.parameters())
        self.state = replace(self.state, step=step, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                             started=self.started, params=sum(p.numel() for p in params),
                             trainable_params=sum(p.numel() for p in params if p.requires_grad))
        self._notify("on_loop_begin")
        model.train()
        while step < self.total_steps:
            epoch, done_in_epoch = divmod(step, self.steps_per_epoch)
            self.dataset.set_epoch(epoch)
            loader.set_epoch(epoch)
            batches = loader
            if done_in_epoch:
                batches = accelerator.skip_first_batches(loader, done_in_epoch * cfg.grad_accum)
            for batch in batches:
                with accelerator.accumulate(model):
                    self._micro_step(model, batch, step, window)
                    if self.saliency and accelerator.sync_gradients:
                        self.saliency.mask_gradients(model)
                        self.saliency_observed = False
                    grad_norm = self._clip(model) if accelerator.sync_gradients else None
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                self.method.after_step(step, self.total_steps)
                self.state.step, self.state.epoch, self.state.tokens = step, step / self.steps_per_epoch, self.loop_tokens
                self._notify("on_step_end")
                bar.update(1)
                window.grad_norm = grad_norm
                stop, early = self._step_control(step)
                if step % cfg.logging_steps == 0 or step == self.total_steps or early:
                    self._log_metrics(step, epoch, scheduler, window)
                    window = _Window()
                self._status(RunState.RUNNING, step=step)
                if stop:
                    bar.close()
                    return RunState.STOPPED, step
                if early or step >= self.total_steps:
                    break
                if cfg.save_steps and step % cfg.save_steps == 0:
                    self._checkpoint(model, optimizer, scheduler, step)
            if self.early_stop_reason:
                break
        bar.close()
        return RunState.FINISHED, step

    def _micro_step(self, model, batch: dict, step: int, window: "_Window") -> None:
        inputs = StepInputs(model, batch, self.original, self.cfg.kl_positions)
        if self.accelerator.num_processes == 1:
            terms = backward_each_term(self.method.loss_terms(inputs), inputs, self.accelerator.backward,
                                       lambda term, terms: self._guard_finite(term, terms, step),
                                       lambda name: self._after_backward(name, model))
        else:  # DDP syncs gradients on every backward: one backward of the sum per micro-batch
            terms = dict(self.method.loss_terms(inputs))
            loss = sum(terms.values())
            self._guard_finite(loss, terms, step)
            self.accelerator.backward(loss)
        with torch.no_grad():   # for the log; free when the loss already read it (RMU does not)
            forget_nll = _token_mean(*inputs.nll("forget"))
        tokens = _batch_tokens(batch)
        self.loop_tokens += tokens
        window.add(terms, tokens, forget_nll, self._retain_nll(model, inputs, step))
        self.step_forget_nlls.append(forget_nll)

    def _after_backward(self, name: str, model) -> None:
        """SURE: the gradient just after a step's first forget term is the forget-loss gradient."""
        if self.saliency and name.startswith("forget") and not self.saliency_observed:
            self.saliency.observe_forget_gradient(model)
            self.saliency_observed = True

    def _retain_nll(self, model, inputs: StepInputs, step: int) -> float | None:
        """Retain NLL for the log: free when the method forwards retain, else a no-grad pass on log steps."""
        if "retain" not in inputs.batch:
            return None
        if not inputs.forwarded("retain"):
            if (step + 1) % self.cfg.logging_steps:
                return None
            with torch.no_grad():
                return _token_mean(*inputs.nll("retain"))
        return _token_mean(*inputs.nll("retain"))

    def _guard_finite(self, loss: torch.Tensor, terms: dict, step: int) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
        if self.accelerator.reduce(bad, "sum").item() == 0:
            return
        values = ", ".join(f"{name} = {float(value.detach()):.4g}" for name, value in terms.items())
        last = self.run_dir.latest_checkpoint()
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        raise UnlearnError(
            f"the loss became non-finite at step {step + 1} ({values}); training stopped and {kept}",
            "lower --lr (or raise --beta), then start again" + (" or --resume" if last else ""))

    def _clip(self, model) -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        max_norm = self.cfg.max_grad_norm or float("inf")
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    def _step_control(self, step: int) -> tuple[bool, bool]:
        """(stop requested, method's early-stop rule met) after an optimizer step, agreed by every process
        in one reduce: a stop event or STOP file anywhere, or the rule on any process's forget NLL."""
        nlls, self.step_forget_nlls = self.step_forget_nlls, []
        reason = self.method.early_stop(sum(nlls) / len(nlls)) if nlls else None
        wanted = self.stop_event.is_set() or self.run_dir.stop_requested()
        flags = torch.tensor([float(wanted), float(reason is not None)], device=self.accelerator.device)
        stop, early = (self.accelerator.reduce(flags, "sum") > 0).tolist()
        if early:
            self.early_stop_reason = reason or "another process met the method's early-stop rule"
            self.log(f"stopped early at step {step}: {self.early_stop_reason}")
        return stop, early

    # ================================================================ logging, saving, finishing
    def _log_metrics(self, step: int, epoch: int, scheduler, window: "_Window") -> None:
        if not self.is_main:
            return
        row = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), **window.summary(),
               **self.method.extra_log(), **({"salient_share": round(self.saliency.kept, 5)} if self.saliency else {}),
               "lr": scheduler.get_last_lr()[0], "grad_norm": window.grad_norm,
               "wall_time": round(time.time() - self.started, 3)}
        self.run_dir.append_metrics(row)
        self.state.metrics = row
        self._notify("on_log", row)

    def _status(self, state: str, **fields) -> None:
        if not getattr(self, "is_main", True) or not hasattr(self, "run_dir"):
            return
        step = fields.get("step", 0)
        total = getattr(self, "total_steps", None)
        extra = {}
        if total:
            extra = {"total_steps": total, "progress": round(step / total, 4), "eta_seconds": self._eta(step)}
        self.run_dir.write_status(state, pid=_pid(), method=self.cfg.method, **extra, **fields)

    def _eta(self, step: int) -> float | None:
        done = step - getattr(self, "start_step", 0)
        if done <= 0:
            return None
        return round((time.time() - self.started) / done * (self.total_steps - step), 1)

    def _checkpoint(self, model, optimizer, scheduler, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main:
            path = save_checkpoint(self.run_dir.checkpoints_dir, step, self.accelerator.unwrap_model(model), optimizer,
                                   scheduler, {"epoch": step / self.steps_per_epoch,
                                               "method_state": self.method.state_dict()}, self.cfg.save_total_limit)
            self._notify("on_checkpoint", path)
        self.accelerator.wait_for_everyone()

    def _finish(self, model, optimizer, scheduler, outcome: str, step: int, before: dict) -> TrainResult:
        summary = {}
        if outcome == RunState.STOPPED:  # a finished run needs no checkpoint: its model is in model/
            self._status(RunState.STOPPING, step=step, message="saving a checkpoint")
            self._checkpoint(model, optimizer, scheduler, step)
        if outcome == RunState.FINISHED:
            unwrapped = self.accelerator.unwrap_model(model)
            after = self._score(unwrapped)
            if self.is_main:
                save_model_atomic(unwrapped, self.tokenizer, self.run_dir.model_dir)
            summary = {"method": self.cfg.method, "before": before, "after": after, "steps": step,
                       "knowledge_check": getattr(self, "knowledge", None),
                       "stopped_early": self.early_stop_reason,
                       "wall_seconds": round(time.time() - self.started, 1),
                       **self._throughput(unwrapped),
                       "model": str(self.run_dir.model_dir), "lora": self.cfg.lora}
            if self.is_main:
                from .runs import write_json_atomic

                write_json_atomic(self.run_dir.summary_path, summary)
        else:
            if self.is_main:
                self.run_dir.clear_stop()
        done = f"done early: {self.early_stop_reason}" if self.early_stop_reason else "done"
        self._status(outcome, step=step, message=done if outcome == RunState.FINISHED else "stopped; resume with --resume")
        self.accelerator.wait_for_everyone()
        return TrainResult(self.run_dir.path, outcome, step, summary, self.is_main)

    def _throughput(self, model) -> dict:
        """Tokens per second over this invocation's loop, and the model FLOPs utilisation they mean."""
        from .flops import mfu, training_flops_per_token

        seconds = time.time() - self.started
        if not self.loop_tokens or seconds <= 0:
            return {}
        per_second = self.loop_tokens / seconds * self.accelerator.num_processes
        dtype = getattr(torch, self.cfg.dtype)   # resolved when the run started: float32 or bfloat16
        utilisation = mfu(per_second, training_flops_per_token(model), dtype, self.device.type)
        return {"tokens_per_second": round(per_second, 1), "mfu": round(utilisation, 4), "mfu_dtype": self.cfg.dtype}

    def _knowledge_check(self, model) -> dict | None:
        """Does the original model know the forget answers at all? (core.knowledge); unlearning runs only."""
        from .evaluation.probes import answer_nll
        from .knowledge import knowledge_check, warning

        if self.cfg.method == "sft":
            return None
        def score(pairs):
            adapter_off = model.disable_adapter() if self.cfg.lora else nullcontext()
            with adapter_off, self.accelerator.autocast():   # a bf16 frozen base needs the autocast of training
                sums, counts = answer_nll(model, self.tokenizer, pairs, self.cfg.batch_size, "knowledge check")
            return [s / max(n, 1) for s, n in zip(sums, counts)]
        check = knowledge_check(score, self.raw_forget[:self.cfg.eval_examples or 32])
        note = warning(check)
        if note:
            self.log(f"warning: {note}")
        return check

    def _score(self, model) -> dict:
        """Mean answer-token NLL on the first `eval_examples` forget and retain examples."""
        n = self.cfg.eval_examples
        if n == 0:
            return {}
        pad, autocast = self.tokenizer.pad_token_id, self.accelerator.autocast
        scores = {"forget_nll": mean_token_nll(model, self.sets["forget"].items[:n], pad, autocast=autocast)}
        if "retain" in self.sets:
            scores["retain_nll"] = mean_token_nll(model, self.sets["retain"].items[:n], pad, autocast=autocast)
        return scores

    def log(self, message: str) -> None:
        if getattr(self, "is_main", True):
            self._log(message)


# ==================================================================== helpers

class _Window:
    """Running means of the loss terms over the micro-batches between two metrics lines."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.tokens = 0
        self.started = time.time()
        self.grad_norm = None

    def _add(self, key: str, value) -> None:
        if value is None:
            return
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1

    def add(self, terms: dict, tokens: int, forget_nll: float, retain_nll) -> None:
        values = {name: float(value.detach()) for name, value in terms.items()}
        self._add("loss", sum(values.values()))
        for name, value in values.items():
            self._add(f"loss_{name}", value)
        self._add("forget_nll", forget_nll)
        self._add("retain_nll", retain_nll)
        self.tokens += tokens

    def summary(self) -> dict:
        elapsed = max(time.time() - self.started, 1e-9)
        row = {key: round(self.sums[key] / self.counts[key], 6) for key in self.sums}
        row["tokens_per_second"] = round(self.tokens / elapsed, 1)
        return row


def backward_each_term(terms: Iterator[tuple[str, torch.Tensor]], inputs: StepInputs,
                       backward: Callable[[torch.Tensor], None],
                       check: Callable[[torch.Tensor, dict], None] = lambda term, terms: None,
                       after: Callable[[str], None] = lambda name: None) -> dict[str, torch.Tensor]:
    """Backpropagate each loss term before the next one is built. The gradients add up to those of the
    sum, and the forget and retain graphs (each holding [batch, answer, vocab] logits) never coexist.
    `check(term, terms so far)` runs before each backward, `after(name)` after it. Returns the detached
    terms."""
    done = {}
    for name, term in terms:
        done[name] = term
        check(term, done)
        backward(term)
        after(name)
        done[name] = term.detach()
        inputs.release_graphs()
    return done


def _batch_tokens(batch: dict) -> int:
    """Non-padding tokens through the model, every view of the batch."""
    return sum(int(part["attention_mask"].sum()) for key, part in batch.items() if key != "index")


def _token_mean(nll: torch.Tensor, n_tokens: torch.Tensor) -> float:
    return float(nll.detach().sum() / n_tokens.sum().clamp(min=1))


def enable_activation_checkpointing(model) -> None:
    """Recompute each block's activations in backward (transformers 5 renamed gradient checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _linear_schedule(optimizer, total_steps: int, warmup_ratio: float):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, int(total_steps * warmup_ratio), total_steps)


def _pid() -> int:
    import os

    return os.getpid()
