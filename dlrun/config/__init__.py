"""The configuration: its typed schema, its checks, building a group option, resolvers and error wording.

Nothing in this package imports torch at module level: a config is checked before any compute.
"""

from dlrun.config.checks import validate

__all__ = ["validate"]
