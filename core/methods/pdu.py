"""PDU: primal-dual unlearning (Entesari et al. 2025, "Constrained Entropic Unlearning: A Primal-Dual
Framework for Large Language Models", arXiv:2506.05314). Forgetting flattens the next-token distribution on
forget answers (the squared margin between the largest and the mean logit); retention is a constraint,
retain NLL <= ε, held by a dual variable λ that grows while the constraint is broken:

    loss = w_f · flatten(forget) + λ · (NLL_retain − ε),   λ <- max(0, λ + η · (NLL_retain − ε)) per step

after a warm-up. The authors advise ε "a little above the pretrained model's retain loss" (their TOFU runs:
0.3): here ε is the original model's NLL of the same retain batch (cached before training) plus
`retain_margin`. λ starts at 100 and moves by η = 5 per step after half the run, as in open-unlearning's
community/methods/PDU/run.sh (5 warm-up epochs of 10). λ is saved in every checkpoint, so a resumed run
continues from the λ it had."""
from ..losses import IGNORE_INDEX, logit_flattening_loss, token_mean
from .base import UnlearningMethod, register
from .params import Param, forget_weight

RUN_SH = "open-unlearning community/methods/PDU/run.sh"


@register
class PDU(UnlearningMethod):
    name = "pdu"
    summary = "Primal-dual: flatten the forget distribution, keep retain NLL under a bound with a dual weight"
    paper = "Entesari et al. 2025, Constrained Entropic Unlearning: A Primal-Dual Framework (arXiv:2506.05314)"
    params = (forget_weight(1.0, "open-unlearning PDU.yaml (gamma)"),
              Param("retain_margin", 0.1, "ε = the original's retain NLL + this margin (nats per token)",
                    "ours: the authors set ε a little above the pretrained retain loss", low=0.0),
              Param("dual_init", 100.0, "the dual variable λ (retain weight) at the start", RUN_SH + " (pref)",
                    low=0.0),
              Param("dual_step_size", 5.0, "η: how fast λ follows the constraint's violation", RUN_SH, low=0.0),
              Param("dual_warmup", 0.5, "fraction of the run before λ starts to move", RUN_SH + " (5 of 10 epochs)",
                    low=0.0, high=1.0))
    views = ("forget", "retain")
    cached_reference = ("retain",)

    def __init__(self, params: dict):
        super().__init__(params)
        self.dual = params["dual_init"]
        self.violations: list[float] = []   # NLL_retain − ε of each micro-batch since the last step

    def loss_terms(self, inputs):
        logits, labels = inputs.logits("forget")
        yield "forget_flatten", self.params["forget_weight"] * logit_flattening_loss(
            logits[:, :-1], labels[:, 1:] != IGNORE_INDEX)
        nll, n_tokens = inputs.nll("retain")
        violation = token_mean(nll, n_tokens) - self.bound(inputs.ref_nll("retain"), n_tokens)
        self.violations.append(float(violation.detach()))
        yield "retain_constraint", self.dual * violation

    def bound(self, ref_nll, n_tokens):
        """ε for this batch: the original model's token-mean NLL of it, plus the margin."""
        return token_mean(ref_nll, n_tokens) + self.params["retain_margin"]

    def after_step(self, step: int, total_steps: int) -> None:
        violation = sum(self.violations) / max(len(self.violations), 1)
        self.violations = []
        if step > self.params["dual_warmup"] * total_steps:
            self.dual = max(0.0, self.dual + self.params["dual_step_size"] * violation)

    def state_dict(self) -> dict:
        return {"dual": self.dual}

    def load_state_dict(self, state: dict) -> None:
        self.dual = state.get("dual", self.params["dual_init"])

    def extra_log(self) -> dict:
        return {"dual": self.dual}
