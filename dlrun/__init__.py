"""dlrun: a config-driven deep-learning experiment runner (Hydra + PyTorch + TensorBoard)."""

from importlib.metadata import PackageNotFoundError, version

from dlrun import resolvers as _resolvers  # noqa: F401  (registers ${dlrun.*} before any composition)

try:
    __version__ = version("dlrun")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
