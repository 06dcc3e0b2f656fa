"""The unlearning loop, built on `accelerate`: `accelerate launch` runs this same code on several GPUs
(DDP, or FSDP/DeepSpeed through an accelerate config) or CPU processes, unchanged.

One optimizer step = `grad_accum` micro-batches; each micro-batch holds `batch_size` forget examples and
whatever other views the method reads. Every step updates status.json; every `logging_steps` a line
goes to metrics.jsonl; the run stops cleanly at a step boundary when asked (STOP file, a threading
event, SIGINT/SIGTERM in the CLI) and resumes from its last checkpoint.
"""
from __future__ import annotations

import math
import os
import platform
import threading
import time
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MethodType
from typing import Callable, Iterator

import torch

from .checkpoint import (load_extra_weights, load_method_tensors, load_trained_weights, read_checkpoint,
                         read_trainer_state, save_checkpoint)
from .config import PATH_FIELDS, UnlearnConfig
from .data import make_collate
from .distributed import (engine_that_ran, full_model_state, is_sharded, load_optimizer_state, load_trained_state,
                          optimizer_state, peer_lost, refuse_unsupported_launch, requested_engine,
                          shard_cpu_processes, trained_state, write_shard_report)
from .errors import UnlearnError
from .methods import StepInputs, get_method
from .methods.base import MethodSetup, UnlearningMethod
from .models import (add_lora, check_quantized_base, frozen_linears_in_bf16, load_model, load_quantized_model,
                     load_tokenizer, mixed_precision, model_summary, pick_device, resolve_model, save_model_atomic)
from .optimizers import build_optimizer, check_optimizer
from .reference import OriginalModel, adapter_off_keeping_trainable, cache_reference_nll
from .quantization import quant_aware_terms
from .runs import RunDir, RunState, write_json_atomic
from .saliency import SalientNeurons
from .scoring import mean_token_nll, prompt_form, scored_on
from .tracking import accelerator_options, end_tracking, log_values, start_tracking
from .views import build_dataset, read_sets


@dataclass
class Progress:
    """The loop's counters, in one place: the trainer writes them, callbacks read them."""
    step: int = 0                   # optimizer steps done (the checkpoint's step at the start of a resume)
    total_steps: int = 0
    steps_per_epoch: int = 0
    start_step: int = 0             # where this invocation began: 0, or the step resumed from
    epoch: float = 0.0
    tokens: int = 0                 # non-padding tokens through the model this invocation
    started: float = 0.0            # time.time() when the loop began
    params: int = 0
    trainable_params: int = 0
    reference_seconds: float = 0.0  # the cached reference NLL's one-time cost (0 when read back)
    early_stop_reason: str | None = None   # why the method's rule ended the run early
    forget_nlls: list[float] = field(default_factory=list)   # the forget NLL of this step's micro-batches
    metrics: dict = field(default_factory=dict)   # the last metrics.jsonl line


class Callback:
    """Observe a run without reaching into the trainer (benchmarks, the studio, a user's own logging).
    Every hook gets the run's Progress; none may change training."""

    def on_loop_begin(self, progress: Progress) -> None: ...
    def on_step_end(self, progress: Progress) -> None: ...
    def on_log(self, progress: Progress, row: dict) -> None: ...
    def on_checkpoint(self, progress: Progress, path: Path) -> None: ...
    def on_loop_end(self, progress: Progress, outcome: "RunState") -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    state: RunState                # FINISHED or STOPPED
    step: int
    summary: dict = field(default_factory=dict)
    is_main_process: bool = True   # under `accelerate launch`, only rank 0 reports
    steps_run: int = 0             # optimizer steps this invocation took (a resumed run: from its checkpoint)


@dataclass(frozen=True)
class RunData:
    """The run's examples, read and tokenised."""
    source: str          # the model, resolved (a local folder or a hub id)
    tokenizer: object
    dataset: object      # what the loader draws from (views.build_dataset), with the cached reference NLL
    sets: dict           # view -> its encoded examples
    raw_forget: list     # the forget examples as read (the knowledge check asks about them)


@dataclass(frozen=True)
class RunParts:
    """Everything the loop uses, built before it starts (Trainer._build)."""
    data: RunData
    model: torch.nn.Module          # as accelerate prepared it (DDP-wrapped under several processes)
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    original: OriginalModel | None  # the original model's outputs, for KL terms and hidden states
    weights: dict                   # the method's extra weights by name (ExtraWeights), unwrapped
    before: dict                    # forget/retain NLL of the original model
    knowledge: dict | None          # core.knowledge's check of the original model (rank 0)


class StopRequest(threading.Event):
    """A stop asked for from outside (Ctrl-C, SIGTERM, the Python API). While the training loop runs, the run
    stops at the next step boundary and keeps a checkpoint; before the loop (reading data, loading, scoring
    the original) and after it (scoring, saving) there is no step to wait for, and a signal interrupts at
    once (core/cli.py). The trainer says which through `at_step_boundary`."""

    def __init__(self):
        super().__init__()
        self.at_step_boundary = False


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
    """One run: the settings, the accelerator and the run directory at construction; `run()` builds the
    rest (`_build`, before anything loops), then loops. The loop's counters live in `self.progress`."""

    def __init__(self, config: UnlearnConfig, stop_event=None, show_progress=True, log=print, callbacks=()):
        if config.resume:
            config = config_for_resume(config.out)
        self.cfg = config.resolved()
        self.as_given = {name: getattr(config, name) for name in PATH_FIELDS
                         if getattr(config, name) != getattr(self.cfg, name)}
        self.method = get_method(self.cfg.method)(self.cfg.method_params)
        self.saliency = SalientNeurons(self.cfg.salient_modules) if self.cfg.salient_modules else None
        self.stop_event = stop_event if stop_event is not None else StopRequest()
        self.show_progress = show_progress
        self._log = log
        self.callbacks = list(callbacks)
        self.progress = Progress()
        self.device = pick_device(self.cfg.device)
        refuse_unsupported_launch(self.device.type)   # before accelerate starts: it would crash, or run DDP
        self.accelerator = _accelerator(self.cfg, self.device)
        shard_cpu_processes(self.accelerator)
        self.is_main = self.accelerator.is_main_process
        self.run_dir = self._open_run_dir()
        if launched_for_several_but_one_runs(self.accelerator.num_processes):
            self.log("warning: accelerate launch was asked for several processes, but this run is one process "
                     "(accelerate's single-process launcher); for several, add --multi_gpu to accelerate launch "
                     "(with --cpu on a machine without GPUs)")

    # ================================================================ entry point
    def run(self) -> TrainResult:
        try:
            parts = self._build()
            outcome = self._loop(parts)
            self._notify("on_loop_end", outcome)
            return self._finish(parts, outcome)
        except UnlearnError as exc:
            self._status(RunState.FAILED, error=str(exc))
            raise
        except KeyboardInterrupt:   # a signal outside the loop's step boundaries (or a second one)
            state, fields = self._interrupted()
            self._status(state, **fields)
            raise
        except Exception as exc:
            state, fields = self._failed(exc)
            self._status(state, **fields)
            raise
        finally:
            end_tracking(self.accelerator)

    def _failed(self, exc: Exception) -> tuple[RunState, dict]:
        """Failed; or interrupted when a collective broke under several processes (another process was killed):
        the run then resumes from its last checkpoint."""
        fields = {"error": f"{type(exc).__name__}: {exc}"}
        if self.accelerator.num_processes > 1 and peer_lost(exc):
            return RunState.INTERRUPTED, {**fields, "step": self.progress.step,
                                          "message": "another process of this run ended; resume with: "
                                                     f"unlearn train --out {self.run_dir.path} --resume"}
        return RunState.FAILED, fields

    def _interrupted(self) -> tuple[RunState, dict]:
        """(state, fields) for a run a signal ended: stopped, resumable, once it has a checkpoint; else
        interrupted, with the command that picks it up again."""
        phase = self.run_dir.status().get("message", "starting")
        if self.run_dir.latest_checkpoint() is not None:
            return RunState.STOPPED, {"message": f"stopped while {phase}; resume with: unlearn train --out "
                                                 f"{self.run_dir.path} --resume", "step": self.progress.step}
        again = (f"unlearn train --out {self.run_dir.path} --resume" if self.run_dir.holds_run()
                 else "the same command again")
        return RunState.INTERRUPTED, {"message": f"interrupted while {phase}; start again with: {again}"}

    def _open_run_dir(self) -> RunDir:
        cfg = self.cfg
        RunDir.prepare(cfg.out, cfg.resume, cfg.overwrite, create=False)  # every rank checks
        self.accelerator.wait_for_everyone()
        if self.is_main:
            RunDir.prepare(cfg.out, cfg.resume, cfg.overwrite)
            RunDir(cfg.out).clear_stop()
        self.accelerator.wait_for_everyone()
        return RunDir(cfg.out)

    def _notify(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self.progress, *args)

    # ================================================================ the build, before anything loops
    def _build(self) -> RunParts:
        """Data, model, reference, extra weights, the method's set-up, optimizer, loader and schedule; on
        resume the checkpoint's weights, optimizer and schedule come last, into what was built."""
        from accelerate.utils import set_seed

        cfg = self.cfg
        self._refuse_what_several_processes_cannot_do()
        self._refuse_switches_an_own_update_ignores()
        check_quantized_base(cfg.quantized_bits(), self.device,
                             str(self.accelerator.distributed_type).rpartition(".")[2])
        check_optimizer(cfg.optim)
        set_seed(cfg.seed)
        self._status(RunState.RUNNING, message="reading data")
        data = self._read_data()
        if not cfg.resume:
            self._write_config(data)
        self._status(RunState.RUNNING, message="loading model")
        model = self._load_model(data.source)
        self._status(RunState.RUNNING, message="scoring the original model")
        self._cache_reference(model, data)
        checkpoint = self.run_dir.latest_checkpoint() if cfg.resume else None
        weights = self._extra_weights(model, data.source, checkpoint)
        original = self._original(model, data.source)
        self._prepare_method(model, weights, checkpoint)
        before, knowledge = self._before(model, data)

        optimizer = self._optimizer(model)
        loader = torch.utils.data.DataLoader(
            data.dataset, batch_size=cfg.batch_size, shuffle=True,
            collate_fn=make_collate(data.tokenizer.pad_token_id, data.dataset.reference_nll))
        model, optimizer, loader = self.accelerator.prepare(model, optimizer, loader)
        write_shard_report(model)
        self._count_steps(len(loader))
        scheduler = _linear_schedule(optimizer, self.progress.total_steps, cfg.warmup_ratio)
        if cfg.resume:
            self._resume(checkpoint, model, optimizer, scheduler)
        return RunParts(data, model, optimizer, scheduler, loader, original, weights, before, knowledge)

    def _refuse_what_several_processes_cannot_do(self) -> None:
        if self.accelerator.num_processes == 1:
            return
        if self.cfg.quant_aware and self.cfg.gradient_checkpointing:   # its backward runs after the weights are back
            raise UnlearnError("--quant-aware with --gradient-checkpointing needs one process: recomputed activations "
                               "would not see the quantised weights", "run it in one process, or drop one of them")
        if self.saliency and not is_sharded(self.accelerator):
            raise UnlearnError("--salient-modules (SURE) needs the forget gradient apart from the others, which "
                               "a DDP run does not keep", "launch with --config_file configs/accelerate/fsdp.yaml "
                               "(FSDP keeps it), run it in one process, or pass --salient-modules 0")
        if self.method.one_process:
            raise UnlearnError(f"method {self.cfg.method} {self.method.one_process}",
                               "run it in one process (without accelerate launch)")
        if is_sharded(self.accelerator) and type(self.method).final_weights is not UnlearningMethod.final_weights:
            raise UnlearnError(f"method {self.cfg.method} keeps the weights it hands over as the final model, which "
                               "FSDP replaces with shards when it wraps the model", "launch with --config_file "
                               "configs/accelerate/ddp.yaml, or run it in one process")
        trained = [spec.name for spec in self.method.extra_weights if spec.trainable]
        if trained:   # each process would train its copy on its own batches, and the copies would drift apart
            raise UnlearnError(f"method {self.cfg.method} trains its own copy of the model ({', '.join(trained)}), "
                               "which the processes of a multi-process run would each train apart",
                               "run it in one process (without accelerate launch)")

    def _refuse_switches_an_own_update_ignores(self) -> None:
        """A method that applies its own update reads the gradient as its own (mudman: the retain gradient):
        a switch that masks it or adds terms to it would be silently lost or wrong."""
        switches = [flag for flag, on in (("--salient-modules", self.saliency), ("--quant-aware", self.cfg.quant_aware))
                    if on]
        if self.method.own_update and switches:
            raise UnlearnError(f"method {self.cfg.method} applies its own update, which {' and '.join(switches)} "
                               "cannot act on", f"drop {' and '.join(switches)}, or choose another method")

    def _read_data(self) -> RunData:
        raw = read_sets(self.cfg, self.method)
        source = resolve_model(self.cfg.model)
        tokenizer = load_tokenizer(source, self.cfg.trust_remote_code)
        dataset, sets = build_dataset(raw, self.cfg, self.method, tokenizer)
        for encoded in sets.values():
            self.log(encoded.describe())
        return RunData(source, tokenizer, dataset, sets, raw.forget)

    def _write_config(self, data: RunData) -> None:
        if not self.is_main:
            return
        import accelerate
        import peft
        import transformers

        self.run_dir.write_config({
            **self.cfg.to_dict(),
            "as_given": self.as_given,   # the paths as typed, for display; the fields above are absolute
            "resolved_model": model_summary(data.source),
            "data": {name: s.report() for name, s in data.sets.items()},
            "method_info": {"name": self.method.name, "paper": self.method.paper, "views": self.method.views},
            "environment": {
                "device": str(self.device), "mixed_precision": self.accelerator.mixed_precision,
                "num_processes": self.accelerator.num_processes, "python": platform.python_version(),
                # how it really ran (NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED): a silent fallback shows here
                "distributed_type": str(self.accelerator.distributed_type).rpartition(".")[2],
                # the engine as it ran (none, DDP, FSDP + fsdp_version, DEEPSPEED) beside what the launch asked for
                "engine": engine_that_ran(self.accelerator), "engine_requested": requested_engine(),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "accelerate": accelerate.__version__,
            },
            "created_at": time.time(),
        })

    def _load_model(self, source: str):
        cfg = self.cfg
        bits = cfg.quantized_bits()
        model = (load_quantized_model(source, bits, self.accelerator.device, cfg.trust_remote_code) if bits
                 else load_model(source, torch.float32, cfg.trust_remote_code))
        if cfg.lora and self.accelerator.mixed_precision == "bf16" and not bits:
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
        return model if bits else model.to(self.accelerator.device)   # a quantised one is loaded in place

    def _cache_reference(self, model, data: RunData) -> None:
        """Cache NLL_ref of fixed sequences once (NPO, IdkDPO), before any weight changes."""
        views = {view: data.sets[view].items for view in self.method.cached_reference}
        started = time.perf_counter()
        data.dataset.reference_nll.update(
            cache_reference_nll(model, views, data.tokenizer.pad_token_id, self.run_dir, self.cfg,
                                self.accelerator, is_lora=self.cfg.lora))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.progress.reference_seconds = time.perf_counter() - started

    def _extra_weights(self, model, source: str, checkpoint: Path | None) -> dict[str, torch.nn.Module]:
        """The copies of the model the method declared (ExtraWeights), on this process's device and
        unwrapped; one more set of weights each. On resume a saved copy comes back from the checkpoint, and
        an unsaved copy of the current model takes the checkpoint's trained weights."""
        weights = {}
        for spec in self.method.extra_weights:
            copy = self._load_original(source) if spec.init == "original" else deepcopy(model)
            if checkpoint is not None and spec.saved:
                load_extra_weights(checkpoint, spec.name, copy)
            elif checkpoint is not None and spec.init == "current":
                load_trained_weights(checkpoint, copy)
            weights[spec.name] = copy.train() if spec.trainable else copy.eval().requires_grad_(False)
            self._compute_as_training_does(copy)
        return weights

    def _compute_as_training_does(self, copy: torch.nn.Module) -> None:
        """Run a copy's forward under training's bf16 autocast, as accelerate's prepare() does for the trained
        model: a LoRA copy keeps the bf16 frozen base beside fp32 adapters and cannot run without it."""
        if self.accelerator.mixed_precision == "bf16":
            copy.forward = MethodType(self.accelerator.autocast()(type(copy).forward), copy)

    def _original(self, model, source: str) -> OriginalModel | None:
        """The original model for KL terms and hidden states: under --lora the trained model with its adapter
        off; under full fine-tuning a frozen copy (+1x weights)."""
        if not self.method.needs_original():
            return None
        frozen = None if self.cfg.lora else self._load_original(source).eval().requires_grad_(False)
        return OriginalModel(model, frozen, self.accelerator.autocast)

    def _load_original(self, source: str) -> torch.nn.Module:
        """A second copy of the model as loaded (the base, without adapter), on this process's device."""
        return load_model(source, torch.float32, self.cfg.trust_remote_code).to(self.accelerator.device)

    def _prepare_method(self, model, weights: dict, checkpoint: Path | None) -> None:
        """The method's own set-up (what trains, what it derives from the model); on resume its saved
        state first, so that it makes the same choices as when the run started."""
        if checkpoint is not None:
            self.method.load_state_dict(read_trainer_state(checkpoint).get("method_state", {}))

        self.method.prepare(MethodSetup(model, self.cfg, self.log, weights))
        if checkpoint is not None:
            self.method.load_tensor_state_dict(load_method_tensors(checkpoint, self.accelerator.device))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if not trainable:
            raise UnlearnError(f"method {self.cfg.method} left no parameter to train",
                               "check its module and layer settings (`unlearn methods`)")

    def _before(self, model, data: RunData) -> tuple[dict, dict | None]:
        """The original model's scores and knowledge check: measured when the run starts (the check on rank
        0), read back from config.json on resume."""
        if self.cfg.resume:
            saved = self.run_dir.config()
            return saved.get("before", {}), saved.get("knowledge_check")
        before = self._score(model, data)
        if not self.is_main:
            return before, None
        knowledge = self._knowledge_check(model, data)
        self.run_dir.write_config({**self.run_dir.config(), "before": before, "knowledge_check": knowledge})
        return before, knowledge

    def _optimizer(self, model) -> torch.optim.Optimizer:
        # As transformers' Trainer (the reference code's): no weight decay on biases and norms.
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return build_optimizer(self.cfg.optim, groups, self.cfg.lr)

    def _count_steps(self, batches_per_epoch: int) -> None:
        progress = self.progress
        progress.steps_per_epoch = math.ceil(batches_per_epoch / self.cfg.grad_accum)
        progress.total_steps = self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * progress.steps_per_epoch))

    def _resume(self, checkpoint: Path | None, model, optimizer, scheduler) -> None:
        if checkpoint is None:
            self.log("no checkpoint yet: the run restarts from step 0")
            if self.is_main:   # the lost attempt's lines would be drawn beside the new ones
                self.run_dir.truncate_metrics(0)
            return
        trainable = {name for name, p in self.accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
        weights, optimizer_saved, saved = read_checkpoint(checkpoint, trainable)
        load_trained_state(self.accelerator, model, weights)   # each rank keeps its shard under FSDP
        load_optimizer_state(self.accelerator, model, optimizer, optimizer_saved)
        scheduler.load_state_dict(saved["scheduler"])
        if self.is_main:
            self.run_dir.truncate_metrics(saved["step"])
        self.log(f"resumed from {checkpoint.name}")
        self.progress.step = self.progress.start_step = saved["step"]

    # ================================================================ the loop
    def _loop(self, parts: RunParts) -> RunState:
        from tqdm.auto import tqdm

        cfg, accelerator, progress = self.cfg, self.accelerator, self.progress
        model, optimizer, scheduler, loader = parts.model, parts.optimizer, parts.scheduler, parts.loader
        params = list(model.parameters())
        progress.params = sum(p.numel() for p in params)
        progress.trainable_params = sum(p.numel() for p in params if p.requires_grad)
        progress.started = time.time()
        bar = tqdm(total=progress.total_steps, initial=progress.step, disable=not (self.is_main and self.show_progress),
                   desc="fine-tuning" if cfg.method == "sft" else f"unlearning ({cfg.method})", unit="step")
        window = _Window()
        start_tracking(accelerator, self.run_dir, progress.step, cfg.resume, self.run_dir.config())
        self._notify("on_loop_begin")
        model.train()
        self._stops_at_step_boundary(True)
        try:
            return self._steps(parts, bar, window)
        finally:
            self._stops_at_step_boundary(False)

    def _stops_at_step_boundary(self, inside_loop: bool) -> None:
        if isinstance(self.stop_event, StopRequest):
            self.stop_event.at_step_boundary = inside_loop

    def _steps(self, parts: RunParts, bar, window: "_Window") -> RunState:
        cfg, accelerator, progress = self.cfg, self.accelerator, self.progress
        model, optimizer, scheduler, loader = parts.model, parts.optimizer, parts.scheduler, parts.loader
        while progress.step < progress.total_steps:
            epoch, done_in_epoch = divmod(progress.step, progress.steps_per_epoch)
            parts.data.dataset.set_epoch(epoch)
            loader.set_epoch(epoch)
            batches = loader
            if done_in_epoch:
                batches = accelerator.skip_first_batches(loader, done_in_epoch * cfg.grad_accum)
            for batch in batches:
                with accelerator.accumulate(model):
                    self._micro_step(parts, batch, window)
                    if self.saliency and accelerator.sync_gradients:
                        self.saliency.mask_gradients(model)
                    grad_norm = self._clip(model) if accelerator.sync_gradients else None
                    self._step_weights(parts)
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                progress.step += 1
                progress.epoch = progress.step / progress.steps_per_epoch
                self.method.after_step(progress.step, progress.total_steps)
                self._notify("on_step_end")
                bar.update(1)
                window.grad_norm = grad_norm
                stop, early = self._step_control()
                if progress.step % cfg.logging_steps == 0 or progress.step == progress.total_steps or early:
                    self._log_metrics(scheduler, window)
                    window = _Window()
                self._status(RunState.RUNNING, step=progress.step)
                if stop:
                    bar.close()
                    return RunState.STOPPED
                if early or progress.step >= progress.total_steps:
                    break
                if cfg.save_steps and progress.step % cfg.save_steps == 0:
                    self._checkpoint(parts)
            if progress.early_stop_reason:
                break
        bar.close()
        return RunState.FINISHED

    def _micro_step(self, parts: RunParts, batch: dict, window: "_Window") -> None:
        model = parts.model
        inputs = StepInputs(model, batch, parts.original, self.cfg.kl_positions, parts.weights)
        if self.accelerator.num_processes == 1 or self.saliency:   # SURE runs in one process or under FSDP
            saliency = self.saliency
            after = (lambda name: saliency.after_backward(name, model)) if saliency else (lambda name: None)
            terms = backward_each_term(self._loss_terms(inputs), inputs, self.accelerator.backward,
                                       self._guard_finite, after)
        else:  # DDP syncs gradients on every backward: one backward of the sum per micro-batch
            terms = dict(self._loss_terms(inputs))
            loss = sum(terms.values())
            self._guard_finite(loss, terms)
            self.accelerator.backward(loss)
        with torch.no_grad():   # for the log; free when the loss already read it (RMU does not)
            forget_nll = _token_mean(*inputs.nll("forget"))
        tokens = _batch_tokens(batch)
        self.progress.tokens += tokens
        window.add(terms, tokens, forget_nll, self._retain_nll(inputs))
        self.progress.forget_nlls.append(forget_nll)

    def _loss_terms(self, inputs: StepInputs) -> Iterator[tuple[str, torch.Tensor]]:
        """The method's terms, then (--quant-aware) its forget terms on the fake-quantised model."""
        yield from self.method.loss_terms(inputs)
        if self.cfg.quant_aware:
            yield from quant_aware_terms(self.method, inputs, self.cfg.quant_aware, self.cfg.quant_aware_format)

    def _retain_nll(self, inputs: StepInputs) -> float | None:
        """Retain NLL for the log: free when the method forwards retain, else a no-grad pass on log steps."""
        if "retain" not in inputs.batch:
            return None
        if not inputs.forwarded("retain"):
            if (self.progress.step + 1) % self.cfg.logging_steps:
                return None
            with torch.no_grad():
                return _token_mean(*inputs.nll("retain"))
        return _token_mean(*inputs.nll("retain"))

    def _guard_finite(self, loss: torch.Tensor, terms: dict) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
        if self.accelerator.reduce(bad, "sum").item() == 0:
            return
        values = ", ".join(f"{name} = {float(value.detach()):.4g}" for name, value in terms.items())
        last = self.run_dir.latest_checkpoint()
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        raise UnlearnError(
            f"the loss became non-finite at step {self.progress.step + 1} ({values}); training stopped and {kept}",
            "lower --lr (or raise --beta), then start again" + (" or --resume" if last else ""))

    def _clip(self, model) -> float:
        """The gradient's norm (for the log), clipped to --max-grad-norm unless the method updates itself."""
        params = [p for p in model.parameters() if p.requires_grad]
        max_norm = float("inf") if self.method.own_update else (self.cfg.max_grad_norm or float("inf"))
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    def _step_weights(self, parts: RunParts) -> None:
        """AdamW's step, or the method's own update (at the end of each optimizer step, with the schedule's
        learning rate for this step)."""
        if not self.method.own_update:
            parts.optimizer.step()
            return
        if not self.accelerator.sync_gradients:
            return
        model = self.accelerator.unwrap_model(parts.model)
        trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            self.method.update(trained, parts.scheduler.get_last_lr()[0], self.progress.step + 1)
        parts.optimizer._opt_called = True   # the schedule is read, not skipped: no "scheduler before optimizer" warning

    def _step_control(self) -> tuple[bool, bool]:
        """(stop requested, method's early-stop rule met) after an optimizer step, agreed by every process
        in one reduce: a stop event or STOP file anywhere, or the rule on any process's forget NLL."""
        progress = self.progress
        nlls, progress.forget_nlls = progress.forget_nlls, []
        reason = self.method.early_stop(sum(nlls) / len(nlls)) if nlls else None
        wanted = self.stop_event.is_set() or self.run_dir.stop_requested()
        flags = torch.tensor([float(wanted), float(reason is not None)], device=self.accelerator.device)
        stop, early = (self.accelerator.reduce(flags, "sum") > 0).tolist()
        if early:
            progress.early_stop_reason = reason or "another process met the method's early-stop rule"
            self.log(f"stopped early at step {progress.step}: {progress.early_stop_reason}")
        return stop, early

    # ================================================================ logging, saving, finishing
    def _log_metrics(self, scheduler, window: "_Window") -> None:
        if not self.is_main:
            return
        progress = self.progress
        row = {"step": progress.step, "epoch": round(progress.step / progress.steps_per_epoch, 4), **window.summary(),
               **self.method.extra_log(), **({"salient_share": round(self.saliency.kept, 5)} if self.saliency else {}),
               "lr": scheduler.get_last_lr()[0], "grad_norm": window.grad_norm,
               "wall_time": round(time.time() - progress.started, 3)}
        self.run_dir.append_metrics(row)
        log_values(self.accelerator, row, progress.step)
        progress.metrics = row
        self._notify("on_log", row)

    def _status(self, state: RunState, **fields) -> None:
        if not self.is_main:
            return
        step, total = fields.get("step", 0), self.progress.total_steps
        extra = {}
        if total:
            extra = {"total_steps": total, "progress": round(step / total, 4), "eta_seconds": self._eta(step)}
        self.run_dir.write_status(state, pid=_pid(), method=self.cfg.method, **extra, **fields)

    def _eta(self, step: int) -> float | None:
        progress = self.progress
        done = step - progress.start_step
        if done <= 0:
            return None
        return round((time.time() - progress.started) / done * (progress.total_steps - step), 1)

    def _checkpoint(self, parts: RunParts) -> None:
        self.accelerator.wait_for_everyone()
        # under FSDP every rank takes part in gathering the full weights and moments; rank 0 writes them
        weights = trained_state(self.accelerator, parts.model)
        moments = optimizer_state(self.accelerator, parts.model, parts.optimizer)
        if self.is_main:
            step = self.progress.step
            saved = {spec.name: parts.weights[spec.name] for spec in self.method.extra_weights if spec.saved}
            path = save_checkpoint(self.run_dir.checkpoints_dir, step, weights, moments, parts.scheduler,
                                   {"epoch": step / self.progress.steps_per_epoch, "method_state": self.method.state_dict()},
                                   self.cfg.save_total_limit, saved, self.method.tensor_state_dict())
            self._notify("on_checkpoint", path)
        self.accelerator.wait_for_everyone()

    def _finish(self, parts: RunParts, outcome: RunState) -> TrainResult:
        progress, summary = self.progress, {}
        if outcome == RunState.STOPPED:  # a finished run needs no checkpoint: its model is in model/
            self._status(RunState.STOPPING, step=progress.step, message="saving a checkpoint")
            self._checkpoint(parts)
        if outcome == RunState.FINISHED:
            unwrapped = self.accelerator.unwrap_model(parts.model)
            self._take_final_weights(unwrapped)
            after = self._score(unwrapped, parts.data)
            # under FSDP the full weights are gathered on rank 0 (every rank takes part), saved in the usual layout
            full = full_model_state(self.accelerator, parts.model)
            if self.is_main:
                save_model_atomic(unwrapped, parts.data.tokenizer, self.run_dir.model_dir, full)
            summary = {"method": self.cfg.method, "before": parts.before, "after": after, "steps": progress.step,
                       "knowledge_check": parts.knowledge,
                       "stopped_early": progress.early_stop_reason,
                       "wall_seconds": round(time.time() - progress.started, 1),
                       **self._throughput(unwrapped),
                       "model": str(self.run_dir.model_dir), "lora": self.cfg.lora,
                       "scored_on": self._scored_on(parts.data)}
            if self.is_main:
                write_json_atomic(self.run_dir.summary_path, summary)
                log_values(self.accelerator, {"summary": summary}, progress.step)
        elif self.is_main:
            self.run_dir.clear_stop()
        done = f"done early: {progress.early_stop_reason}" if progress.early_stop_reason else "done"
        self._status(outcome, step=progress.step,
                     message=done if outcome == RunState.FINISHED else "stopped; resume with --resume")
        self.accelerator.wait_for_everyone()
        return TrainResult(self.run_dir.path, outcome, progress.step, summary, self.is_main,
                           steps_run=progress.step - progress.start_step)

    def _take_final_weights(self, model) -> None:
        """The method's own final model (final_weights(): e.g. its weight average) replaces the trained weights."""
        weights = self.method.final_weights()
        if weights is None:
            return
        params = dict(model.named_parameters())
        unknown = sorted(set(weights) - set(params))
        if unknown:
            raise UnlearnError(f"method {self.cfg.method}'s final weights name parameters this model does not have "
                               f"({', '.join(unknown[:3])}) (internal error)")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        self.log(f"the final model takes {self.cfg.method}'s own weights ({len(weights)} tensors)")

    def _throughput(self, model) -> dict:
        """Tokens per second over this invocation's loop, and the model FLOPs utilisation they mean."""
        from .flops import mfu, training_flops_per_token

        seconds = time.time() - self.progress.started
        if not self.progress.tokens or seconds <= 0:
            return {}
        per_second = self.progress.tokens / seconds * self.accelerator.num_processes
        dtype = getattr(torch, self.cfg.dtype)   # resolved when the run started: float32 or bfloat16
        utilisation = mfu(per_second, training_flops_per_token(model), dtype, self.device.type)
        return {"tokens_per_second": round(per_second, 1), "mfu": round(utilisation, 4), "mfu_dtype": self.cfg.dtype}

    def _knowledge_check(self, model, data: RunData) -> dict | None:
        """Does the original model know the forget answers at all? (core.knowledge); unlearning runs only."""
        from .evaluation.probes import answer_nll
        from .knowledge import knowledge_check, warning

        if self.cfg.method == "sft" or self.method.second_stage:
            return None

        def score(pairs):
            adapter_off = adapter_off_keeping_trainable(model) if self.cfg.lora else nullcontext()
            with adapter_off, self.accelerator.autocast():   # a bf16 frozen base needs the autocast of training
                sums, counts = answer_nll(model, data.tokenizer, pairs, self.cfg.batch_size, "knowledge check")
            return [s / max(n, 1) for s, n in zip(sums, counts)]
        check = knowledge_check(score, data.raw_forget[:self.cfg.eval_examples or 32])
        note = warning(check)
        if note:
            self.log(f"warning: {note}")
        return check

    def _score(self, model, data: RunData) -> dict:
        """Mean answer-token NLL on the first `eval_examples` forget and retain examples."""
        n = self.cfg.eval_examples
        if n == 0:
            return {}
        pad, autocast = data.tokenizer.pad_token_id, self.accelerator.autocast
        scores = {"forget_nll": mean_token_nll(model, data.sets["forget"].items[:n], pad, autocast=autocast)}
        if "retain" in data.sets:
            scores["retain_nll"] = mean_token_nll(model, data.sets["retain"].items[:n], pad, autocast=autocast)
        return scores

    def _scored_on(self, data: RunData) -> dict:
        """What _score's figures were computed on (core.scoring.scored_on)."""
        n = self.cfg.eval_examples
        examples = {name: min(n, len(data.sets[name].items)) for name in ("forget", "retain") if name in data.sets}
        dtype = "bfloat16 autocast" if self.accelerator.mixed_precision == "bf16" else "float32"
        return scored_on(examples, dtype, prompt_form(data.tokenizer))

    def log(self, message: str) -> None:
        if self.is_main:
            self._log(message)


def _accelerator(cfg: UnlearnConfig, device: torch.device):
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState

    # accelerate keeps one precision per process; a second run in the same process (the Python API, a
    # benchmark) may want another. The distributed set-up (PartialState) is kept.
    AcceleratorState._reset_state()
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision=mixed_precision(cfg.dtype, device),
        gradient_accumulation_steps=cfg.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        **accelerator_options(cfg.report_to, cfg.out))   # --report-to: accelerate's trackers


def launched_for_several_but_one_runs(num_processes: int, environ=os.environ) -> bool:
    """`accelerate launch --num_processes N` (N > 1) without --multi_gpu (or a config that says so) starts
    accelerate's single-process launcher, which still sets MASTER_PORT for the N it was asked for; a real
    multi-process launch also sets WORLD_SIZE. Seen here, a user asked for N processes and got one."""
    by_accelerate = "ACCELERATE_MIXED_PRECISION" in environ
    return by_accelerate and "MASTER_PORT" in environ and "WORLD_SIZE" not in environ and num_processes == 1


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
