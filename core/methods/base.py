"""What every unlearning method shares: the registry, hyper-parameter resolution from the method's own
`Param` declarations, and `StepInputs`, the one place that runs the model on a view of the batch (forget,
retain, ...) and slices its outputs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Literal

import torch

from ..errors import UnlearnError, require
from ..losses import IGNORE_INDEX, kl_all_positions, kl_real_positions, kl_to_reference, sequence_nll, token_nll
from ..reference import OriginalModel, layer_output
from ..scoring import forward_logits
from .params import Param

METHODS: dict[str, type["UnlearningMethod"]] = {}


def register(cls: type["UnlearningMethod"]) -> type["UnlearningMethod"]:
    """Add a method to the registry. A name shared by several methods is one CLI flag and one studio
    field, so it must have one type everywhere."""
    for param in cls.params:
        for other in METHODS.values():
            clash = next((p for p in other.params if p.name == param.name and p.kind is not param.kind), None)
            if clash:
                raise TypeError(f"{cls.name}.{param.name} is {param.kind.__name__} but {other.name}'s is "
                                f"{clash.kind.__name__}: one name, one type")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["UnlearningMethod"]:
    require(name in METHODS, f"unknown method {name!r}", f"choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def parameter_names() -> list[str]:
    """Every hyper-parameter name any registered method declares, in declaration order."""
    return list(dict.fromkeys(p.name for method in METHODS.values() for p in method.params))


@dataclass(frozen=True)
class ExtraWeights:
    """A second set of weights a method needs beside the model being trained, built by the trainer before
    prepare() and handed over in `MethodSetup.weights[name]` and `StepInputs.weights(name)`.

    init "original": a copy of the model as loaded (the base model, without adapter, under --lora);
    "current": a copy of the model being trained as the run starts (LoRA-wrapped under --lora; on a resume
    without `saved`, the checkpoint's weights). Each copy costs one more set of weights in memory.
    trainable False: eval mode, no gradients (a teacher). True: train mode, its parameters as copied
    (a copy of the current model trains what it trains); never in the trainer's optimizer: the method
    updates it itself (e.g. with an optimizer it builds in prepare()).
    saved: written into every checkpoint and loaded back on resume, so a stopped run resumes exactly.
    """
    name: str
    init: Literal["original", "current"]
    trainable: bool = False
    saved: bool = False
    help: str = ""

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):   # it names a checkpoint file
            raise ValueError(f"extra weights name {self.name!r}: use lower-case letters, digits and _")
        if self.init not in ("original", "current"):
            raise ValueError(f"extra weights {self.name!r}: init must be 'original' or 'current', not {self.init!r}")


class UnlearningMethod:
    """A method is its loss. Subclasses set the class attributes and write `loss_terms`."""
    name: ClassVar[str]
    summary: ClassVar[str]          # one line, shown by `unlearn methods` and the studio
    paper: ClassVar[str]            # the method's paper (each Param names where its default comes from)
    params: ClassVar[tuple[Param, ...]] = ()              # its hyper-parameters, with defaults and ranges
    renamed: ClassVar[dict[str, str]] = {}                # old name -> new name, for runs written before
    views: ClassVar[tuple[str, ...]] = ("forget",)        # batch parts the loss reads
    cached_reference: ClassVar[tuple[str, ...]] = ()      # views whose NLL_ref is precomputed once
    kl_views: ClassVar[tuple[str, ...]] = ()              # views with a KL-to-original term
    reads_original: ClassVar[bool] = False                # reads the original's logits or hidden states
    listed: ClassVar[bool] = True                         # offered as an unlearning method
    salient_modules: ClassVar[float] = 0.0                # SURE's update fraction when --salient-modules is not given
    extra_weights: ClassVar[tuple[ExtraWeights, ...]] = ()  # copies of the model it needs (a teacher, an adversary)
    own_update: ClassVar[bool] = False                    # an optimizer, not a loss: update() moves the weights
    one_process: ClassVar[str] = ""                       # why it cannot run in several processes (refused first)
    default_lr: ClassVar[float | None] = None             # its --lr when none is given (an own update's step size)
    resists: ClassVar[str] = ""                           # built to survive relearning: how, and what it costs
    second_stage: ClassVar[bool] = False                  # runs on a model that already unlearned (no knowledge
                                                          # check: its model is meant not to know the forget set)
    trained_copies: ClassVar[int] = 0                     # fp32 copies of the trained weights it keeps beside
                                                          # the optimizer's (saved weights, gradients, an average)

    def __init__(self, params: dict):
        self.params = params

    @classmethod
    def defaults(cls) -> dict:
        return {p.name: p.default for p in cls.params}

    @classmethod
    def resolve_params(cls, given: dict | None) -> dict:
        """The given hyper-parameters checked against this method's declarations, defaults filled in."""
        given = {cls.renamed.get(name, name): value for name, value in (given or {}).items() if value is not None}
        declared = {p.name: p for p in cls.params}
        unknown = [name for name in given if name not in declared]
        require(not unknown, f"method {cls.name} has no hyper-parameter {', '.join(unknown)}",
                f"drop it; {cls.name} takes: {', '.join(declared) or 'none'} (see `unlearn methods`)")
        return {name: param.check(given[name], cls.name) if name in given else param.default
                for name, param in declared.items()}

    def loss_terms(self, inputs: "StepInputs") -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the weighted loss terms as (name, scalar), one at a time; the total loss is their sum.

        The trainer backpropagates each term before asking for the next, so the graphs of different views
        (forget, retain, ...) never sit in memory together: run a term's forward passes inside its yield."""
        raise NotImplementedError

    def early_stop(self, forget_nll: float) -> str | None:
        """Why training should end now, given this step's mean forget-answer NLL; None to go on."""
        return None

    @classmethod
    def needs_original(cls) -> bool:
        """Whether the trainer must keep the original model at hand (adapter off, or a frozen copy)."""
        return bool(cls.kl_views) or cls.reads_original

    def prepare(self, setup: "MethodSetup") -> None:
        """Before the optimizer is built: a method may choose what trains (freeze the rest), or derive what
        it needs from the model. Called again on resume, after load_state_dict."""

    def after_step(self, step: int, total_steps: int) -> None:
        """After each optimizer step (e.g. a dual variable's schedule)."""

    def state_dict(self) -> dict:
        """What the method keeps between steps (JSON-able): saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict() on resume."""

    def extra_log(self) -> dict:
        """Values to write into metrics.jsonl beside the loss terms (e.g. a dual variable)."""
        return {}

    def update(self, params: dict[str, torch.nn.Parameter], lr: float, step: int) -> None:
        """With `own_update`: move the trained weights (by name, in place, under no_grad) once per optimizer
        step, instead of the trainer's clipping and AdamW. Each `.grad` holds the yielded terms' gradient,
        averaged over the step's micro-batches; `lr` is the run's scheduled learning rate (--lr, warm-up and
        decay); `step` counts optimizer steps from 1."""
        raise NotImplementedError(f"{self.name} declares own_update but has no update()")

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights the run's final model takes instead of the trained ones, by the trained model's parameter
        names (e.g. a weight average); None keeps the trained weights. Read once, when the run finishes,
        before the final scores and the save. Keep them in tensor_state_dict() too, under
        core.checkpoint.METHOD_MODEL_PREFIX, so that a checkpoint opens as the model the run would end with."""
        return None

    def tensor_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors the method keeps between steps (e.g. running means): saved in every checkpoint
        (method-state.safetensors), so that a resumed run continues exactly."""
        return {}

    def load_tensor_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore tensor_state_dict() on resume (on the run's device), after prepare()."""


class MethodSetup:
    """What prepare() may use: the model being trained (LoRA-wrapped if --lora), the run's settings, the log,
    and the extra weights the method declared, by name."""

    def __init__(self, model, config, log: Callable[[str], None], weights: dict[str, torch.nn.Module] | None = None):
        self.model, self.config, self.log = model, config, log
        self.weights = dict(weights or {})


class StepInputs:
    """Forward passes of one micro-batch, run lazily and at most once per view.

    What a method may read of each view (forget, retain, ...): the answer-token NLL, per-token
    log-probabilities, the logits, the cached reference NLL, the original model's logits and a decoder
    layer's hidden states under the current and the original model. Only the logits that predict answer
    tokens are materialised (see scoring.forward_logits).
    """

    def __init__(self, model, batch: dict, original: "OriginalModel | None" = None, kl_positions: str = "answer",
                 weights: dict[str, torch.nn.Module] | None = None):
        self.model = model
        self.batch = batch
        self.original = original
        self.kl_positions = kl_positions
        self._weights = weights or {}
        self._outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._nll: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def logits(self, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, K, V] of the positions from the one before the first answer token on, and the labels
        [B, K] they line up with (position t's logits predict labels[t + 1])."""
        if view not in self._outputs:
            self._outputs[view] = forward_logits(self.model, self.batch[view])
        return self._outputs[view]

    def nll(self, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence summed answer NLL [B] and answer-token counts [B] under the current model."""
        if view not in self._nll:
            self._nll[view] = sequence_nll(*self.logits(view))
        return self._nll[view]

    def token_nll(self, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """-log p(answer token) at each predicting position [B, K-1] (0 off the answer), and the mask of
        answer tokens: what token-weighted methods (WGA, SatImp) weigh."""
        return token_nll(*self.logits(view))

    def ref_nll(self, view: str) -> torch.Tensor:
        """The original model's NLL of the same sequences, cached before training."""
        return self.batch[view]["ref_nll"].to(self.batch[view]["input_ids"].device)

    def original_logits(self, view: str) -> torch.Tensor:
        """The original model's logits, aligned with logits(view)."""
        _, labels = self.logits(view)
        return self._original().__call__(self.batch[view], labels.shape[1])

    def kl(self, view: str) -> torch.Tensor:
        """KL(original ‖ current): averaged over the positions that predict answer tokens, or, with
        kl_positions "all", over every position of the batch (prompt and padding too), as open-unlearning's
        compute_kl_divergence does (kl_div(..., reduction="batchmean") over [B·T, V])."""
        if self.kl_positions == "all":
            part = self.batch[view]
            logits = self.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            return kl_all_positions(logits, self._original()(part, 0))
        logits, labels = self.logits(view)
        return kl_to_reference(logits, self.original_logits(view), labels)

    def distillation_kl(self, view: str) -> torch.Tensor:
        """KL(original ‖ current) over every position whose next token is real, prompt and answer: the
        original as a teacher whose outputs the current model learns (UNDO)."""
        part = self.batch[view]
        logits = self.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        return kl_real_positions(logits, self._original()(part, 0), part["attention_mask"])

    def hidden(self, view: str, layer: int) -> torch.Tensor:
        """Decoder layer `layer`'s output hidden states [B, T, D] under the current model (with grad)."""
        return layer_output(self.model, self.batch[view], layer)

    def original_hidden(self, view: str, layer: int) -> torch.Tensor:
        """The same layer's output under the original model (no grad)."""
        return self._original().hidden(self.batch[view], layer)

    def answer_mask(self, view: str) -> torch.Tensor:
        """[B, T] true at the positions of answer tokens (the labelled ones, unshifted)."""
        return self.batch[view]["labels"] != IGNORE_INDEX

    def weights(self, name: str) -> torch.nn.Module:
        """The extra weights the method declared as `name` (ExtraWeights); run them on `self.batch[view]`."""
        if name not in self._weights:
            raise UnlearnError(f"this method reads extra weights {name!r} but none were set up (internal error: "
                               f"declare them in extra_weights; set up: {', '.join(self._weights) or 'none'})")
        return self._weights[name]

    def fresh(self, cls: type["StepInputs"] | None = None) -> "StepInputs":
        """The same micro-batch with nothing forwarded yet, as `cls` (a StepInputs subclass): a second pass
        under other weights (quantisation-aware forgetting)."""
        return (cls or type(self))(self.model, self.batch, self.original, self.kl_positions, self._weights)

    def _original(self) -> "OriginalModel":
        if self.original is None:
            raise UnlearnError("this method reads the original model but none was set up (internal error)")
        return self.original

    def forwarded(self, view: str) -> bool:
        return view in self._nll

    def release_graphs(self) -> None:
        """After a backward: drop the logits, keep the NLL values for the log. A view asked for again would
        be forwarded again, never backpropagated through a freed graph."""
        self._outputs.clear()
        self._nll = {view: (nll.detach(), count) for view, (nll, count) in self._nll.items()}
