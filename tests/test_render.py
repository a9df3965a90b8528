"""Text and HTML renderers (golden outputs on hand-built results), show(), figures."""
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from jaxattr.render import CSP, show, to_html, to_text
from jaxattr.render._common import diverging_rgb, display_token
from jaxattr.results import AttributionOutput, SequenceAttribution

from _results_helpers import NAN, toy_decoder, toy_encdec, toy_output

ANSI = re.compile(r"\x1b\[[0-9;]*m")

GOLDEN_DECODER = """\
Sequence 0
                Ġyou     !
target
  Hi            0.50  0.25
  Ġthere       -0.25  0.12
  Ġyou             ·  0.50
  !                ·     ·
step scores
  probability   0.25   0.5
"""

GOLDEN_ENCDEC_PAGED = """\
Sequence 0 · saliency of
  probability · toy
[generated tokens 1–2 of 3]
                ▁The    ▁c
source
  ▁Le           1.00  2.00
  ▁ch           3.00  4.00
  at           -2.00  1.00
  </s>          2.00  0.00
target
  <pad>         1.00  2.00
  ▁The             ·  2.00
  ▁c               ·     ·
  at               ·     ·
step scores
  probability    0.5   0.4
  entropy          1     2

[generated token 3 of 3]
                  at
source
  ▁Le           1.00
  ▁ch           2.00
  at           -5.00
  </s>          2.00
target
  <pad>         1.00
  ▁The          2.00
  ▁c            7.00
  at               ·
step scores
  probability    0.5
  entropy        0.5
"""


def encdec_output():
    return AttributionOutput([toy_encdec().reduce_hidden("sum")],
                             {"method": "saliency", "attributed_fn": "probability",
                              "model": "toy"})


# --------------------------------------------------------------------------- text
def test_text_golden_decoder_only():
    assert to_text(toy_decoder(), color=False, width=80) == GOLDEN_DECODER


def test_text_golden_paginated_encoder_decoder():
    text = to_text(encdec_output(), color=False, width=30)
    assert text == GOLDEN_ENCDEC_PAGED
    assert max(len(line) for line in text.splitlines()) <= 30


def test_text_aggregates_3d_results_and_fits_any_width():
    text = to_text(toy_output(), color=False, width=200)
    assert text.count("Sequence ") == 2 and "[generated" not in text
    # default aggregation: L2 over hidden then normalised columns -> values in [0, 1]
    values = [float(v) for v in re.findall(r"-?\d+\.\d\d(?!\d)", text.split("step scores")[0])]
    assert values and all(0 <= v <= 1 for v in values)
    long = SequenceAttribution(None, [f"tok{i}" for i in range(60)], None,
                               np.tril(np.ones((60, 50), np.float32), -11), {}, 10, 60)
    for width in (40, 80, 120):
        paged = to_text(long, color=False, width=width)
        assert max(len(line) for line in paged.splitlines()) <= width
        for i in range(10, 60):
            assert f"tok{i}" in paged
    with pytest.raises(ValueError, match="hidden axis"):
        to_text(toy_encdec(), color=False, aggregate=False)


def test_text_colour_uses_a_symmetric_diverging_scale():
    pytest.importorskip("rich")
    coloured = to_text(encdec_output(), color=True, width=80)
    assert ANSI.search(coloured)
    plain = ANSI.sub("", coloured)
    for tok in ("▁Le", "</s>", "<pad>", "-5.00", "7.00", "probability"):
        assert tok in plain
    assert "\x1b" not in to_text(encdec_output(), color=False)
    long = SequenceAttribution(None, [f"tok{i}" for i in range(40)], None,
                               np.tril(np.ones((40, 30), np.float32), -11) - 0.5, {}, 10, 40)
    for width in (40, 100):
        lines = ANSI.sub("", to_text(long, color=True, width=width)).splitlines()
        assert max(len(line) for line in lines) <= width
    assert diverging_rgb(0.0, 2.0) == (255, 255, 255)
    assert diverging_rgb(2.0, 2.0)[0] > diverging_rgb(2.0, 2.0)[2]          # red
    assert diverging_rgb(-2.0, 2.0)[2] > diverging_rgb(-2.0, 2.0)[0]        # blue
    pos, neg = diverging_rgb(1.0, 2.0), diverging_rgb(-1.0, 2.0)
    assert 255 - min(pos) == pytest.approx(255 - min(neg), abs=40)          # same intensity
    assert diverging_rgb(NAN, 1.0) is None


def test_show_prints_plain_text_when_not_a_tty(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    buf = io.StringIO()
    show(toy_decoder(), file=buf, notebook=False, width=80)
    assert buf.getvalue() == GOLDEN_DECODER
    buf = io.StringIO()
    toy_output().show(file=buf, notebook=False, width=80)
    assert "\x1b" not in buf.getvalue() and buf.getvalue().count("Sequence") == 2


def test_display_tokens_escape_control_characters():
    assert display_token("a\nb\t") == "a\\nb\\t"
    assert display_token("\x00") == "\\x00"
    assert display_token("") == "''"
    assert display_token("abcdefghij", 5) == "abcd…"


# --------------------------------------------------------------------------- html
class Cells(HTMLParser):
    """Collects cells, row/column headers and every attribute of a rendered page."""

    def __init__(self):
        super().__init__()
        self.stack, self.cells, self.rows, self.cols, self.attrs = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attrs.append((tag, attrs))
        self.stack.append((tag, attrs.get("class", ""), attrs))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if not self.stack:
            return
        tag, cls, attrs = self.stack[-1]
        if "ja-row" in cls:
            self.rows.append(data)
        elif "ja-col" in cls:
            self.cols.append(data)


def parse(html):
    p = Cells()
    p.feed(html)
    p.cells = [a for t, a in p.attrs if t == "td" and "ja-cell" in a.get("class", "")]
    return p


def tricky():
    return SequenceAttribution(
        source=["<script>alert(1)</script>", "A&B", '"q"'], target=["<pad>", "</td>", "x&amp;"],
        source_attributions=np.array([[0.5, -0.5], [0.25, 0.0], [-1.0, 1.0]], np.float32),
        target_attributions=np.array([[0.1, 0.2], [NAN, 0.3], [NAN, NAN]], np.float32),
        step_scores={"prob<ability>": np.array([0.5, 0.25], np.float32)},
        attr_pos_start=1, attr_pos_end=3)


def test_html_escapes_every_token():
    html = to_html(tricky(), max_token_width=40)
    assert "<script" not in html and "</td>\"" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "A&amp;B" in html and "x&amp;amp;" in html and "&quot;q&quot;" in html
    assert "prob&lt;ability&gt;" in html
    p = parse(html)
    assert p.rows[:3] == ["<script>alert(1)</script>", "A&B", '"q"']
    assert p.cols == ["</td>", "x&amp;"]


def test_html_has_every_cell_with_values_on_hover():
    html = to_html(tricky(), digits=2)
    p = parse(html)
    assert len(p.cells) == (3 + 3) * 2
    titled = [c["title"] for c in p.cells]
    assert "<script>alert(1)</script> → </td>: 0.5" in titled
    assert "A&B → x&amp;: 0.0" in titled
    na = [c for c in p.cells if "ja-na" in c["class"]]
    assert len(na) == 3                                           # not-yet-generated rows
    # colour: symmetric diverging scale; +0.5 and -0.5 equally intense, opposite hues
    style = {c["title"]: c.get("style", "") for c in p.cells}
    red = style["<script>alert(1)</script> → </td>: 0.5"]
    blue = style["<script>alert(1)</script> → x&amp;: -0.5"]
    assert red != blue and "#ffffff" in style["A&B → x&amp;: 0.0"]


def test_html_page_is_self_contained():
    html = to_html(toy_output(), title="Report <1>")
    assert html.startswith("<!DOCTYPE html>")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html
    assert "default-src 'none'" in CSP and "<title>Report &lt;1&gt;</title>" in html
    p = parse(html)
    for tag, attrs in p.attrs:
        assert "src" not in attrs, tag
        assert "href" not in attrs, tag
    assert "url(" not in html and "@import" not in html and "<script" not in html
    # the token view: one radio per generated token, each label bound to its radio
    radios = [a for t, a in p.attrs if t == "input"]
    labels = [a for t, a in p.attrs if t == "label"]
    assert len(radios) == len(labels) == 3 + 2
    assert {a["for"] for a in labels} == {a["id"] for a in radios}


def test_notebook_fragment_and_repr_html(tmp_path):
    frag = toy_output()._repr_html_()
    assert "<html" not in frag and "<style>" in frag and 'class="ja-root"' in frag
    assert toy_decoder()._repr_html_().count("ja-cell") > 0
    a, b = to_html(toy_decoder(), full_page=False), to_html(toy_decoder(), full_page=False)
    ids = lambda h: set(re.findall(r'id="([^"]+)"', h))  # noqa: E731
    assert not ids(a) & ids(b)                          # two renders can share a notebook
    path = tmp_path / "r.html"
    text = toy_output().to_html(path=path)
    assert path.read_text(encoding="utf-8") == text


# --------------------------------------------------------------------------- figure
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_figure(tmp_path, suffix, magic):
    pytest.importorskip("matplotlib")
    from jaxattr.render import save_figure
    fig = toy_encdec().to_figure()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["▁The", "▁c", "at"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["▁Le", "▁ch", "at", "</s>",
                                                           "<pad>", "▁The", "▁c", "at"]
    lo, hi = ax.images[0].get_clim()
    assert lo == -hi                                                  # symmetric scale
    path = save_figure(toy_output(), tmp_path / f"fig{suffix}", index=1)
    assert path.read_bytes()[:5].startswith(magic)


def test_computation_code_never_imports_render():
    import subprocess
    import sys
    code = ("import sys, jaxattr, jaxattr.aggregate, jaxattr.io, jaxattr.results\n"
            "from _results_helpers import toy_output\n"
            "o = toy_output().merge_words().aggregate(); jaxattr.io.dumps(o)\n"
            "assert 'jaxattr.render' not in sys.modules, 'render imported'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=__import__("pathlib").Path(__file__).parent)
    assert res.returncode == 0, res.stderr[-2000:]
