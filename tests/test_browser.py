"""The HTML report in a real browser: headless Chromium loads the file from disk; the test
reads the rendered DOM and Chromium's network log.

Needs the Debian ``chromium`` package (``apt-get install -y --no-install-recommends chromium``);
skipped when no Chromium is installed, except under ``CI=true`` where a missing Chromium
fails the test (CI must run it). Chromium runs in its own empty network namespace
(``unshare -n``) when the machine allows it, with every hostname unresolvable and a dead
loopback proxy otherwise, and with its background services off: nothing can leave the machine.
"""
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from jaxattr.render import to_html
from jaxattr.results import AttributionOutput, SequenceAttribution

from _results_helpers import NAN, gpt2_output, toy_output

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-pings", "--disable-breakpad",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,SpellCheckService,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    "--metrics-recording-only", "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    "--hide-scrollbars", "--window-size=1200,900",
]


@pytest.fixture(scope="module")
def chromium():
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        msg = "Chromium is not installed (Debian: apt-get install -y chromium)"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"{msg}; under CI=true the browser test must run, not skip.")
        pytest.skip(msg)
    prefix = []
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        prefix = [unshare, "-n"]

    def run(tmp_path, url, *extra):
        profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
        netlog = tmp_path / f"{profile.name}.netlog.json"
        cmd = prefix + [exe, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}",
                        *extra, url]
        res = subprocess.run(cmd, capture_output=True, timeout=120)
        assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
        return res.stdout.decode("utf-8"), page_requests(netlog)
    return run


def page_requests(netlog_path) -> list:
    """URLs the page itself asked for (requests whose network isolation key is the file://
    page), from Chromium's net log."""
    text = netlog_path.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:                       # a log cut short on exit
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for ev in log.get("events", []):
        p = ev.get("params") or {}
        if names.get(ev["type"]) == "URL_REQUEST_START_JOB" and \
                str(p.get("network_isolation_key", "")).startswith("file://"):
            urls.append(p["url"])
    return urls


class Dom(HTMLParser):
    """Text of row headers, column headers, cells and labels; every attribute."""

    def __init__(self):
        super().__init__()
        self.stack, self.found, self.attrs, self.metas = [], {}, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attrs.append((tag, attrs))
        if tag == "meta":
            self.metas.append(attrs)
        if tag not in ("br", "input", "meta"):
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if self.stack:
            tag, attrs = self.stack[-1]
            for cls in attrs.get("class", "").split():
                self.found.setdefault(cls, []).append(data)


def dump_dom(chromium, tmp_path, html):
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    dom_text, requests = chromium(tmp_path, page.as_uri(), "--dump-dom")
    dom = Dom()
    dom.feed(dom_text)
    return dom, dom_text, requests


def tricky():
    return SequenceAttribution(
        source=["<script>alert(1)</script>", "A&B", "<img src=x>", "▁é"],
        target=["<pad>", "Ġ&", "</table>", "\"q\""],
        source_attributions=np.array([[0.5, -0.5, 0.1], [0.25, 0.0, -0.2],
                                      [-1.0, 1.0, 0.3], [0.0, 0.1, 0.2]], np.float32),
        target_attributions=np.array([[0.1, 0.2, 0.3], [NAN, 0.3, 0.2], [NAN, NAN, 0.1],
                                      [NAN, NAN, NAN]], np.float32),
        step_scores={"probability": np.array([0.5, 0.25, 0.125], np.float32)},
        attr_pos_start=1, attr_pos_end=4)


def test_report_renders_every_token_and_cell_without_requests(chromium, tmp_path):
    out = AttributionOutput([tricky()] + list(gpt2_output().aggregate()),
                            {"method": "saliency", "attributed_fn": "probability"})
    dom, text, requests = dump_dom(chromium, tmp_path, to_html(out, max_token_width=64))
    assert requests == []
    csp = [m for m in dom.metas if m.get("http-equiv", "").lower() == "content-security-policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    for tag, attrs in dom.attrs:                 # nothing in the page could fetch anything
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
    assert "<script" not in text and "<img" not in text           # escaped, never parsed
    rows = [t for s in out for t in (s.source or []) + s.target]
    cols = [t for s in out for t in s.generated]
    assert dom.found["ja-row"] == [t for s in out
                                   for t in (s.source or []) + s.target + list(s.step_scores)]
    assert dom.found["ja-col"] == cols
    n_cells = sum((len(s.source or []) + len(s.target)) * len(s.generated) for s in out)
    cells = [a for t, a in dom.attrs if t == "td" and "ja-cell" in a.get("class", "")]
    assert len(cells) == n_cells
    assert sum("ja-na" in a["class"] for a in cells) == sum(
        int(np.isnan(s.target_attributions).sum()) for s in out)
    assert "<script>alert(1)</script> → Ġ&: 0.5" in [a.get("title") for a in cells]
    # token view: every input token shown, a label per generated token
    shown = dom.found["ja-in"] + dom.found["ja-g"]
    assert sorted(shown) == sorted(rows)
    assert dom.found["ja-g"] == cols


def test_network_check_detects_a_request(chromium, tmp_path):
    """The check above can fail: a page that loads an image is caught (loopback only)."""
    html = ("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
            "<img src='http://127.0.0.1:9/pixel.png'></body></html>")
    _, _, requests = dump_dom(chromium, tmp_path, html)
    assert requests == ["http://127.0.0.1:9/pixel.png"]
    blocked = to_html(toy_output()).replace(
        "</body>", "<img src='http://127.0.0.1:9/pixel.png'></body>")
    _, _, requests = dump_dom(chromium, tmp_path, blocked)
    assert requests == []                        # the report's CSP stops it


def test_screenshot(chromium, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(to_html(toy_output()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_context_report_renders_tokens_and_cues_without_requests(chromium, tmp_path):
    """The PECoRe view (``AttributeContextOutput.to_html``): every output and context token
    rendered once and escaped, selected tokens and salient cues marked, no request."""
    from jaxattr.context import AttributeContextOutput, CCIOutput
    out = AttributeContextOutput(
        input_context="<b>A</b> & B", input_context_tokens=["<script>x</script>", "A&", "▁é"],
        output_current="y", output_current_tokens=["Ġy", "<img src=x>", "z"],
        cti_scores=[0.1, 2.0, 0.3],
        cci_scores=[CCIOutput(cti_idx=1, cti_token="<img src=x>", cti_score=2.0,
                              contextual_output="y <img src=x>",
                              input_context_scores=[0.5, -1.0, 0.1])],
        info={"attribution_std_threshold": 0.5}, cti_threshold=1.5)
    dom, text, requests = dump_dom(chromium, tmp_path, out.to_html())
    assert requests == []
    assert "<script" not in text and "<img" not in text
    assert dom.found["ja-out"] == ["Ġy", "<img src=x>", "z"]
    assert dom.found["ja-ctx"] == ["<script>x</script>", "A&", "▁é"]
    assert dom.found["ja-cti"] == ["<img src=x>"]
    # threshold mean + 0.5 std = -0.133 + 0.5 * 0.777 = 0.255: cues are the first two tokens
    assert dom.found["ja-cue"] == ["<script>x</script>", "A&"]
