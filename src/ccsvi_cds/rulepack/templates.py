"""The Jinja2 environment card templates render in: sandboxed, with `cite(id)` for evidence.

Two ways to treat a name or field that is not there: at request time `ChainableUndefined` renders it as
nothing (so `{{ prior.performed }}` never turns a critical warning into no card at all), while the checks
before a pack is accepted (`rules lint`, hot reload) render with `StrictUndefined`, so the same slip fails
loudly there with its file:line:column. A template that renders under the strict environment renders
identically under the lenient one: strictness only adds failures.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from jinja2 import ChainableUndefined, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from ccsvi_cds.rulepack.model import Citation


def citation_markdown(citation: Citation) -> str:
    """A markdown citation: linked only when the pack holds a verified identifier."""
    link = citation.link
    return f"([{citation.label}]({link}))" if link else f"({citation.label})"


def template_env(evidence: Mapping[str, Citation], *, strict: bool = False) -> SandboxedEnvironment:
    """strict: every undefined name or field raises (checks); else it renders as nothing (requests)."""
    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=False, trim_blocks=False,
                               undefined=StrictUndefined if strict else ChainableUndefined)

    def cite(evidence_id: str) -> str:
        citation = evidence.get(evidence_id)
        if citation is None:
            raise KeyError(f"unknown evidence id '{evidence_id}'")
        return citation_markdown(citation)

    env.globals["cite"] = cite
    return env


_CITE = re.compile(r"\{\{\s*cite\(\s*['\"]([a-z0-9-]+)['\"]\s*\)\s*\}\}")


def inline_citations(source: str, evidence: Mapping[str, Citation]) -> str:
    """Replace literal `{{ cite('id') }}` calls by their markdown once, at compile time.

    Citations depend only on the pack, so rendering them per card would be wasted work on the hot path.
    Unknown ids are left for `cite` to report.
    """

    def replace(m: re.Match[str]) -> str:
        citation = evidence.get(m.group(1))
        return m.group(0) if citation is None else "{% raw %}" + citation_markdown(citation) + "{% endraw %}"

    return _CITE.sub(replace, source)
