"""The rule pack: its format (model), how it is read (source, loader) and compiled for the engine."""

from ccsvi_cds.rulepack.loader import PackError, RulePack, check_pack, load_pack
from ccsvi_cds.rulepack.source import Problem

__all__ = ["PackError", "Problem", "RulePack", "check_pack", "load_pack"]
