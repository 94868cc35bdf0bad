"""Patient-facing pages that cards link to, rendered from the pack's patient-info/*.md to standalone HTML."""

from __future__ import annotations

import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

PAGE_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_STYLE = """body{font:17px/1.55 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.6rem;line-height:1.25}h2{font-size:1.2rem;margin-top:1.8rem}em{color:#555}"""


def page_path(pack_root: Path, page: str) -> Path | None:
    """The markdown file for `page`, or None: ids are checked so a request can never name another file."""
    if not PAGE_ID.match(page):
        return None
    path = pack_root / "patient-info" / f"{page}.md"
    return path if path.is_file() else None


def render_page(markdown_text: str) -> str:
    body = MarkdownIt("commonmark", {"html": False}).render(markdown_text)
    title = next((line[2:].strip() for line in markdown_text.splitlines() if line.startswith("# ")), "Information")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>")
