"""Text shipped with asrtune (sentences, term lists, templates), named ``packaged:NAME`` wherever a file is taken."""

PACKAGED_PREFIX = "packaged:"

__all__ = ["PACKAGED_PREFIX"]
