from __future__ import annotations

from builders import ROOT

from ccsvi_cds.patient_info import page_path, render_page


def test_the_card_link_page_exists_and_renders(evaluate):
    from builders import condition, order

    link = next(link for link in evaluate(condition(), order()).cards[0]["links"] if "patient-info" in link["url"])
    page = link["url"].rsplit("/", 1)[1]
    path = page_path(ROOT / "rules", page)
    assert path is not None
    html = render_page(path.read_text())
    assert html.startswith("<!doctype html>") and "<h1>" in html and "sham" in html


def test_page_ids_cannot_escape_the_pack():
    for page in ("../pack", "..%2Fpack", "pack.yaml", "CCSVI", "", "a/b"):
        assert page_path(ROOT / "rules", page) is None


def test_raw_html_in_markdown_is_not_passed_through():
    assert "<script>" not in render_page("# T\n\n<script>alert(1)</script>")
