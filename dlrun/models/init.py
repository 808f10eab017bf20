"""Weight initialisation schemes selectable with `model.init`."""

from __future__ import annotations

from torch import nn

INIT_SCHEMES = ("default", "xavier", "kaiming", "normal", "standard_normal")


def initialize(model: nn.Module, scheme: str) -> None:
    """Re-initialise every Linear, Conv and recurrent weight matrix (biases to zero).

    `default` keeps PyTorch's own initialisation. Norm layers keep theirs (scale 1, shift 0).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"model.init={scheme!r} is not one of: {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            weights, biases = [module.weight], [module.bias]
        elif isinstance(module, nn.RNNBase):  # weight_ih_l0, weight_hh_l0, bias_ih_l0, ...
            weights = [p for n, p in module.named_parameters() if n.startswith("weight")]
            biases = [p for n, p in module.named_parameters() if n.startswith("bias")]
        else:
            continue
        for weight in weights:
            if scheme == "xavier":  # d2l's choice for its CNNs
                nn.init.xavier_uniform_(weight)
            elif scheme == "kaiming":
                nn.init.kaiming_uniform_(weight, nonlinearity="relu")
            elif scheme == "normal":  # d2l's from-scratch models: N(0, 0.01^2)
                nn.init.normal_(weight, std=0.01)
            else:  # d2l 3.7's weight-decay demo starts from N(0, 1) so that overfitting shows
                nn.init.normal_(weight, std=1.0)
        for bias in biases:
            if bias is not None:
                nn.init.zeros_(bias)
