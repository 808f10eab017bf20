"""Weight initialisation schemes selectable with `model.init`."""

from __future__ import annotations

from torch import nn

INIT_SCHEMES = ("default", "xavier", "kaiming", "normal", "standard_normal")


def initialize(model: nn.Module, scheme: str) -> None:
    """Re-initialise every Linear and Conv weight (biases to zero); `default` keeps PyTorch's init."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"model.init={scheme!r} is not one of: {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if scheme == "xavier":  # d2l's choice for its CNNs
                nn.init.xavier_uniform_(module.weight)
            elif scheme == "kaiming":
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            elif scheme == "normal":  # d2l's softmax/MLP from scratch: N(0, 0.01^2)
                nn.init.normal_(module.weight, std=0.01)
            else:  # d2l 3.7's weight-decay demo starts from N(0, 1) so that overfitting shows
                nn.init.normal_(module.weight, std=1.0)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
