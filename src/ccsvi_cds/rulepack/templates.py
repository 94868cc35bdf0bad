"""The Jinja2 environment card templates render in: sandboxed, with `cite(id)` for evidence."""

from __future__ import annotations

from collections.abc import Mapping

from jinja2.sandbox import SandboxedEnvironment

from ccsvi_cds.rulepack.model import Citation


def citation_markdown(citation: Citation) -> str:
    """A markdown citation: linked only when the pack holds a verified identifier."""
    link = citation.link
    return f"([{citation.label}]({link}))" if link else f"({citation.label})"


def template_env(evidence: Mapping[str, Citation]) -> SandboxedEnvironment:
    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=False, trim_blocks=False)

    def cite(evidence_id: str) -> str:
        citation = evidence.get(evidence_id)
        if citation is None:
            raise KeyError(f"unknown evidence id '{evidence_id}'")
        return citation_markdown(citation)

    env.globals["cite"] = cite
    return env
