"""The rule engine: durable_rules behind a wrapper that avoids its known failure modes."""

from ccsvi_cds.engine.session import EngineError, Match, RuleEngine

__all__ = ["EngineError", "Match", "RuleEngine"]
