"""Any torchvision classification model by name, optionally with its pretrained weights."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

IMAGENET_CLASSES = 1000  # torchvision's classification heads are built for ImageNet
# The channel statistics torchvision's pretrained weights were trained with (inputs in [0, 1]).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TorchvisionModel(nn.Module):
    """`torchvision.models.<name>` with its classifier replaced by one of `num_outputs`.

    The first convolution is adapted to the dataset's channels (pretrained RGB filters are
    summed for one channel, repeated and rescaled for more). `pretrained` loads torchvision's
    default weights from torch's cache, downloading them if needed (a file already in the cache
    is checked against the hash its name carries); `model.weights=<file>` loads a file of
    torchvision's layout the same way (`load_foreign_weights`); `freeze_backbone` trains only the
    new head. Pretrained weights expect ImageNet-sized inputs: set `model.input_size=224`.
    Every dlrun dataset gives images in [0, 1]; with `pretrained`, the model itself normalizes
    them with ImageNet's channel statistics, as those weights expect (their means for one channel).
    """

    def __init__(self, input_shape: list[int], num_outputs: int, name: str = "resnet18",
                 pretrained: bool = False, freeze_backbone: bool = False) -> None:
        super().__init__()
        choices = list_models(module=torchvision.models)  # classification models only
        if name not in choices:
            raise ValueError(f"name {name!r} is not a torchvision classification model; one of: {', '.join(choices)}")
        if len(input_shape) != 3:
            raise ValueError(f"torchvision models read images [C, H, W], got input_shape {list(input_shape)}")
        self.name, self.channels, self.num_outputs, self.freeze_backbone = name, input_shape[0], num_outputs, \
            freeze_backbone
        self.net = get_model(name, weights=load_pretrained_weights(name) if pretrained else None)
        self._adapt(pretrained)

    def _adapt(self, pretrained: bool) -> None:
        """The ImageNet network in `self.net` fitted to the dataset: its channels, its outputs, its inputs' scale."""
        self.pretrained = pretrained
        mean, std = _input_statistics(self.channels) if pretrained else (torch.zeros(1), torch.ones(1))
        # Not saved in checkpoints: they follow from `pretrained` and the channels.
        self.register_buffer("input_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", std.view(1, -1, 1, 1), persistent=False)
        if self.freeze_backbone:
            self.net.requires_grad_(False)  # the head built below is new, hence trainable
        _adapt_first_conv(self.net, self.channels, keep_filters=pretrained)
        _replace_head(self.net, self.num_outputs)

    def load_foreign_weights(self, state: dict[str, torch.Tensor], source: str) -> None:
        """`model.weights` in torchvision's layout (`torch.save(torchvision.models.<name>().state_dict())`, its
        published files): loaded into the ImageNet network, which is then fitted as pretrained weights are."""
        from dlrun.models.weights import load_exactly

        if any(key.startswith("net.") for key in state):  # this wrapper's own layout, of another head or size
            load_exactly(self, state, f"model.weights={source}")
            return
        device = next(self.parameters()).device
        self.net = get_model(self.name, weights=None)
        load_exactly(self.net, state, f"model.weights={source} (torchvision's {self.name})")
        self._adapt(pretrained=True)
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pretrained:
            x = (x - self.input_mean) / self.input_std
        outputs = self.net(x)
        # GoogLeNet and Inception v3 return (logits, aux logits...) while training
        return outputs if isinstance(outputs, torch.Tensor) else outputs.logits


def _input_statistics(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's per-channel mean and std for RGB; their averages for any other number of channels."""
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    if channels == 3:
        return mean, std
    return mean.mean().expand(channels).clone(), std.mean().expand(channels).clone()


def load_pretrained_weights(name: str) -> torchvision.models.WeightsEnum:
    """The default weights of `name`, fetched into torch's cache now so a failure says where they go."""
    weights = get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rpartition("/")[2]
    if cached.is_file():  # torch.hub checks a file's hash when it downloads it, not when it finds it in the cache
        from dlrun.models.weights import HASH_IN_NAME, check_hash

        found = HASH_IN_NAME.search(cached.name)
        if found is not None:
            check_hash(cached, found.group(1), f"model.pretrained=true ({name})")
    try:
        weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as error:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot load pretrained weights for {name} ({reason}); download {weights.url} "
                         f"into {cache} (torch.hub.get_dir(); set TORCH_HOME to move it)") from None
    return weights


def _adapt_first_conv(net: nn.Module, channels: int, keep_filters: bool) -> None:
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    if keep_filters:  # keep the response to a grey image: the summed (or rescaled) RGB filters
        with torch.no_grad():
            if channels == 1:
                weight = conv.weight.sum(dim=1, keepdim=True)
            else:
                repeats = math.ceil(channels / conv.in_channels)
                weight = conv.weight.repeat(1, repeats, 1, 1)[:, :channels] * (conv.in_channels / channels)
            new.weight.copy_(weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    new.requires_grad_(conv.weight.requires_grad)
    _set_submodule(net, name, new)


def _replace_head(net: nn.Module, num_outputs: int) -> None:
    """Swap the last layer producing the ImageNet classes (a Linear, or SqueezeNet's 1x1 conv)."""
    heads = [(n, m) for n, m in net.named_modules()
             if (isinstance(m, nn.Linear) and m.out_features == IMAGENET_CLASSES)
             or (isinstance(m, nn.Conv2d) and m.out_channels == IMAGENET_CLASSES)]
    name, head = heads[-1]
    if isinstance(head, nn.Linear):
        new: nn.Module = nn.Linear(head.in_features, num_outputs)
    else:
        new = nn.Conv2d(head.in_channels, num_outputs, head.kernel_size, head.stride, head.padding)
    _set_submodule(net, name, new)


def _set_submodule(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)
