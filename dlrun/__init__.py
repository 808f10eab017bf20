"""dlrun: a config-driven deep-learning experiment runner (Hydra + PyTorch + TensorBoard)."""

from importlib.metadata import PackageNotFoundError, version

# Register the ${dlrun.*} resolvers before any composition (neither imports torch).
from dlrun.config import resolvers as _config_resolvers  # noqa: F401
from dlrun.data import resolvers as _data_resolvers  # noqa: F401

try:
    __version__ = version("dlrun")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
