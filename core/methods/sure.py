"""SURE (Zhang et al., ICLR 2025, "Catastrophic Failure of LLM Unlearning via Quantization"): NPO+RT whose
updates go only to the most salient neurons of each step, chosen by the forget-loss gradient, so that the
weights which move cross quantisation bins and the forgetting survives 4-bit export. The saliency rule is
core/saliency.py and works with any method through --salient-modules (e.g. grad_diff --salient-modules 0.1);
this entry is NPO+RT with the paper's fraction, 0.1 (its 90th-percentile threshold). The authors pair it
with larger learning rates than plain NPO; the learning rate here is the run's own."""
from .base import register
from .npo_rt import NPORetain


@register
class SURE(NPORetain):
    name = "sure"
    summary = "NPO+RT updating only each step's most salient neurons: forgetting that survives 4-bit quantisation"
    paper = "Zhang et al. 2025, Catastrophic Failure of LLM Unlearning via Quantization (ICLR 2025), SURE"
    salient_modules = 0.1
