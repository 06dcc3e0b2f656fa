"""RMU: Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark", ICML 2024).
Not a likelihood method: on forget inputs, a decoder layer's hidden states are pushed towards a fixed
random direction scaled by a steering coefficient (c·u), which scrambles what later layers read; on retain
inputs, the same layer's hidden states are held to the original model's. Only a few layers' MLP output
projections train (WMDP: layers 5-7 with the loss read at layer 7).

    loss = w_f · MSE(h_ℓ(forget), c·u) + w_r · MSE(h_ℓ(retain), h_ℓ^original(retain))

MSE per sequence over its answer positions (mean over the hidden size), then over the batch, as
open-unlearning's RMU. u is uniform on [0, 1)^d, normalised, drawn from the run's seed: a resumed run
steers towards the same vector. Defaults: open-unlearning's configs/trainer/RMU.yaml (layer 7, c 2,
weights 1/1); the trained modules are WMDP's (rmu/unlearn.py: mlp.down_proj of layers ℓ-2..ℓ)."""
import torch

from ..errors import UnlearnError
from ..losses import activation_distance
from ..reference import decoder_layers
from .base import UnlearningMethod, register
from .params import Param, forget_weight

RMU_YAML = "open-unlearning RMU.yaml"
WMDP = "WMDP rmu/unlearn.py"


@register
class RMU(UnlearningMethod):
    name = "rmu"
    summary = "Representation misdirection: steer one layer's forget activations to a random vector"
    paper = "Li et al. 2024, The WMDP Benchmark: Measuring and Reducing Malicious Use with Unlearning (ICML 2024)"
    params = (Param("layer", 7, "decoder layer whose output hidden states the loss reads (0 = first)",
                    RMU_YAML + " (model.layers.7)", low=0),
              Param("steering_coeff", 2.0, "length c of the random control vector", RMU_YAML, low=0.0, above=True),
              forget_weight(1.0, RMU_YAML + " (gamma)"),
              Param("retain_mse_weight", 1.0, "weight of the MSE to the original's hidden states on retain",
                    RMU_YAML + " (alpha)", low=0.0),
              Param("train_modules", "mlp.down_proj", "module, inside each trained layer, whose weights train",
                    WMDP),
              Param("train_layers", 3, "how many layers train: the loss layer and the ones before it", WMDP,
                    low=1))
    views = ("forget", "retain")
    reads_original = True

    def prepare(self, setup):
        model = setup.model
        layers = decoder_layers(model)
        layer = self.params["layer"]
        if layer >= len(layers):
            raise UnlearnError(f"rmu's layer {layer} is not in this model: it has {len(layers)} decoder layers "
                               f"(0-{len(layers) - 1})", f"use --layer {min(7, len(layers) - 1)}")
        first = max(0, layer - self.params["train_layers"] + 1)
        train_only(model, [layers[i] for i in range(first, layer + 1)], self.params["train_modules"])
        setup.log(f"rmu: layers {first}-{layer} {self.params['train_modules']} train; the loss reads layer {layer}")
        generator = torch.Generator().manual_seed(setup.config.seed)
        direction = torch.rand(model.config.hidden_size, generator=generator)
        self.control = (direction / direction.norm() * self.params["steering_coeff"]).to(next(model.parameters()).device)

    def loss_terms(self, inputs):
        layer = self.params["layer"]
        hidden = inputs.hidden("forget", layer)
        target = self.control.to(hidden.dtype).expand_as(hidden)
        yield "forget_rmu", self.params["forget_weight"] * activation_distance(hidden, target,
                                                                               inputs.answer_mask("forget"))
        retain = activation_distance(inputs.hidden("retain", layer), inputs.original_hidden("retain", layer),
                                     inputs.answer_mask("retain"))
        yield "retain_mse", self.params["retain_mse_weight"] * retain


def train_only(model, layers: list, module_name: str) -> None:
    """Freeze every trainable parameter except those of `module_name` inside the given layers (the
    module's own weights under full fine-tuning, its LoRA adapter under --lora)."""
    names = {id(m): name for name, m in model.named_modules()}
    prefixes = [f"{names[id(layer)]}.{module_name}." for layer in layers]
    found = [prefix for prefix in prefixes if any(n.startswith(prefix) for n, _ in model.named_parameters())]
    if not found:
        inside = sorted({n.removeprefix(names[id(layers[-1])] + ".").rsplit(".", 1)[0]
                         for n, _ in model.named_parameters() if n.startswith(names[id(layers[-1])] + ".")})
        raise UnlearnError(f"rmu's train_modules {module_name!r} is not a module of this model's layers",
                           f"use one of: {', '.join(inside[:12])} (e.g. --train-modules {inside[0]})")
    for name, param in model.named_parameters():
        if param.requires_grad and not any(name.startswith(prefix) for prefix in prefixes):
            param.requires_grad_(False)
