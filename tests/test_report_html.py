"""The HTML grid as a person sees it: rendered by a real headless Chromium (Debian's), which
takes a screenshot and measures the laid-out page. Readable means: nothing wider than the window,
no text clipped in a cell, no text under 12 px, and text that stands out from its background
(WCAG AA contrast, 4.5:1); the screenshot shows every verdict's colour."""
import json
import os
import re
import shutil
import subprocess

import pytest
from PIL import Image

from harness.reports import grid, results
from tests.test_report import REGRESSION

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
MEASURE = """
<script>
// Appended by tests/test_report_html.py to a copy of the report; the report itself has no script.
(function () {
  function background(el) {
    for (; el; el = el.parentElement) {
      const bg = getComputedStyle(el).backgroundColor;
      if (bg && bg !== "rgba(0, 0, 0, 0)" && bg !== "transparent") return bg;
    }
    return "rgb(255, 255, 255)";
  }
  const texts = [], clipped = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!node.textContent.trim() || el.closest("details:not([open]) > :not(summary)")) continue;
    const style = getComputedStyle(el);
    if (style.display === "none" || el.id === "kc-measure") continue;
    texts.push({text: node.textContent.trim().slice(0, 40), size: parseFloat(style.fontSize),
                color: style.color, background: background(el)});
  }
  for (const el of document.querySelectorAll("td, th")) {
    if (el.scrollWidth > el.clientWidth + 1) clipped.push(el.textContent.trim().slice(0, 60));
  }
  const out = document.createElement("pre");
  out.id = "kc-measure";
  out.textContent = JSON.stringify({viewport: window.innerWidth,
      pageWidth: document.documentElement.scrollWidth, texts: texts, clipped: clipped,
      headers: [...document.querySelectorAll("table.grid thead th")].map(th => th.textContent)});
  document.body.appendChild(out);
})();
</script>
"""


@pytest.fixture(scope="module")
def chromium():
    explicit = os.environ.get("KCONFORM_CHROMIUM")
    found = explicit or next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if not found:
        pytest.fail("no Chromium to look at the HTML report with: `./kconform test` installs "
                    "Debian's chromium; elsewhere install one or set KCONFORM_CHROMIUM")
    return found


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    grid.write_reports(results.load(REGRESSION), out)
    return out / results.REPORT_HTML


def measured(chromium, html, tmp_path, width):
    """What MEASURE reports of a page rendered by a real browser at that width."""
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", MEASURE + "</body>"))
    proc = headless(chromium, tmp_path, "--dump-dom", probe.as_uri(), width=width)
    match = re.search(r'<pre id="kc-measure">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"the browser rendered nothing: {proc.stderr[-2000:]}"
    return json.loads(match.group(1).replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))


def headless(chromium, tmp_path, *args, width=1280, height=2000):
    profile = tmp_path / f"profile-{width}"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--force-color-profile=srgb", "--force-device-scale-factor=1", "--no-first-run",
           f"--user-data-dir={profile}", f"--window-size={width},{height}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def contrast(fg: str, bg: str) -> float:
    def luminance(css):
        r, g, b = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("width", [1280, 800])
def test_the_page_is_readable_in_a_real_browser(chromium, page, tmp_path, width):
    m = measured(chromium, page.read_text(), tmp_path, width)
    assert m["pageWidth"] <= m["viewport"], "the page is wider than the window"
    assert m["clipped"] == []
    # a kernel's column names the architecture it ran on (the saved runs are amd64's)
    assert m["headers"][:4] == ["behaviour", "debian-5.10 amd64", "debian-7.2 amd64", "changed at"]
    small = [t for t in m["texts"] if t["size"] < 12]
    assert small == []
    faint = [(t["text"], round(contrast(t["color"], t["background"]), 2)) for t in m["texts"]
             if contrast(t["color"], t["background"]) < 4.5]
    assert faint == []
    assert len(m["texts"]) > 50  # the walk saw the page


def test_screenshot_shows_every_verdict(chromium, page, tmp_path):
    shot = tmp_path / "report.png"
    proc = headless(chromium, tmp_path, f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    print(f"screenshot: {shot}")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    count = {rgb: n for n, rgb in colours}
    white = count.get((255, 255, 255), 0)
    assert white < 0.9 * 1280 * 2000, "the page is (nearly) blank"
    css = grid.CSS
    for verdict in ("pass", "expected-difference", "fail", "crashed"):
        hex_bg = re.search(rf"\.v-{verdict} {{ background: #(\w{{6}})", css).group(1)
        rgb = tuple(int(hex_bg[i:i + 2], 16) for i in (0, 2, 4))
        assert count.get(rgb, 0) > 2000, f"no {verdict} cell visible in the screenshot"
