"""What every unlearning method shares: the registry, hyper-parameter resolution, and `StepInputs`,
the one place that runs the model on a view of the batch (forget, retain, ...) and slices its outputs."""
from __future__ import annotations

from typing import Callable, ClassVar, Iterator

import torch

from ..errors import UnlearnError, require
from ..losses import kl_to_reference, sequence_nll
from ..scoring import forward_logits

METHODS: dict[str, type["UnlearningMethod"]] = {}
HYPER_PARAMETERS = ("beta", "delta", "forget_weight", "retain_weight", "mismatch_weight", "mismatch_k",
                    "max_forget_loss")


def register(cls: type["UnlearningMethod"]) -> type["UnlearningMethod"]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["UnlearningMethod"]:
    require(name in METHODS, f"unknown method {name!r}", f"choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


class UnlearningMethod:
    """A method is its loss. Subclasses set the class attributes and write `loss_terms`."""
    name: ClassVar[str]
    summary: ClassVar[str]          # one line, shown by `unlearn methods` and the studio
    paper: ClassVar[str]            # where the defaults come from
    defaults: ClassVar[dict]        # hyper-parameter -> published default
    views: ClassVar[tuple[str, ...]] = ("forget",)        # batch parts the loss reads
    cached_reference: ClassVar[tuple[str, ...]] = ()      # views whose NLL_ref is precomputed once
    kl_views: ClassVar[tuple[str, ...]] = ()              # views with a KL-to-original term
    listed: ClassVar[bool] = True                         # offered as an unlearning method

    def __init__(self, params: dict):
        self.params = params

    @classmethod
    def resolve_params(cls, config) -> dict:
        unused = [p for p in HYPER_PARAMETERS if getattr(config, p) is not None and p not in cls.defaults]
        require(not unused, f"method {cls.name} has no hyper-parameter {', '.join(unused)}",
                f"drop it; {cls.name} takes: {', '.join(cls.defaults) or 'none'}")
        return {key: (getattr(config, key) if getattr(config, key) is not None else default)
                for key, default in cls.defaults.items()}

    def loss_terms(self, inputs: "StepInputs") -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the weighted loss terms as (name, scalar), one at a time; the total loss is their sum.

        The trainer backpropagates each term before asking for the next, so the graphs of different views
        (forget, retain, ...) never sit in memory together: run a term's forward passes inside its yield."""
        raise NotImplementedError

    def early_stop(self, forget_nll: float) -> str | None:
        """Why training should end now, given this step's mean forget-answer NLL; None to go on."""
        return None


class StepInputs:
    """Forward passes of one micro-batch, run lazily and at most once per view.

    Only the logits that predict answer tokens are materialised (see scoring.forward_logits).
    """

    def __init__(self, model, batch: dict, reference_logits: Callable | None = None):
        self.model = model
        self.batch = batch
        self.reference_logits = reference_logits
        self._outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._nll: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _forward(self, view: str):
        if view not in self._outputs:
            self._outputs[view] = forward_logits(self.model, self.batch[view])
        return self._outputs[view]

    def nll(self, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence summed answer NLL [B] and answer-token counts [B] under the current model."""
        if view not in self._nll:
            self._nll[view] = sequence_nll(*self._forward(view))
        return self._nll[view]

    def ref_nll(self, view: str) -> torch.Tensor:
        """The original model's NLL of the same sequences, cached before training."""
        return self.batch[view]["ref_nll"].to(self.batch[view]["input_ids"].device)

    def kl(self, view: str) -> torch.Tensor:
        """KL(original ‖ current) on this view's supervised tokens."""
        if self.reference_logits is None:
            raise UnlearnError("this method needs a KL reference but none was set up (internal error)")
        logits, labels = self._forward(view)
        ref_logits = self.reference_logits(self.batch[view], labels.shape[1])
        return kl_to_reference(logits, ref_logits, labels)

    def forwarded(self, view: str) -> bool:
        return view in self._nll

    def release_graphs(self) -> None:
        """After a backward: drop the logits, keep the NLL values for the log. A view asked for again would
        be forwarded again, never backpropagated through a freed graph."""
        self._outputs.clear()
        self._nll = {view: (nll.detach(), count) for view, (nll, count) in self._nll.items()}

