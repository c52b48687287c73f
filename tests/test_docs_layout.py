"""The built docs site, looked at in a headless browser (Debian's Chromium).

Every page is loaded at a desktop width (1280 px); no table, code block or image may reach
past the content column or need a horizontal scroll bar, and no image may be shown at less
than 1/1.3 of its width (the benchmark plots' legends were about 5 px when their figures were
scaled down to half). Screenshots of the benchmark page are written too; set
``DOCS_SCREENSHOTS=DIR`` to keep them.
"""

from __future__ import annotations

import concurrent.futures
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (1280,)

pytestmark = pytest.mark.slow

# Injected at the end of each page: lists what sticks out of the content column once loaded.
_CHECK = """<script>
window.addEventListener('load', () => {
  const out = [];
  const column = document.querySelector('.md-content__inner');
  const right = column ? column.getBoundingClientRect().right : Infinity;
  const wide = 'table, pre, img, .md-typeset__scrollwrap';
  for (const el of column ? column.querySelectorAll(wide) : []) {
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;
    const what = el.tagName.toLowerCase() + ' "' +
      (el.getAttribute('src') || el.innerText || '').slice(0, 50).replace(/\\s+/g, ' ') + '"';
    if (r.right > right + 1)
      out.push(what + ' reaches ' + Math.round(r.right - right) + ' px past the column');
    if (el.tagName !== 'IMG' && el.scrollWidth > el.clientWidth + 1)
      out.push(what + ' needs a horizontal scroll bar (' +
        (el.scrollWidth - el.clientWidth) + ' px)');
    if (el.tagName === 'IMG' && el.naturalWidth / r.width > 1.3)
      out.push(what + ' is shown at 1/' + (el.naturalWidth / r.width).toFixed(2) + ' of its size');
  }
  const pre = document.createElement('pre');
  pre.id = 'layout-report';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    reason = "no Chromium: apt-get install chromium (Debian's package) for the docs layout check"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(target)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    return target


def _browser(chromium: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _problems(chromium: str, page: Path, width: int) -> list[str]:
    done = _browser(
        chromium,
        f"--window-size={width},1000",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
    )
    match = re.search(r'<pre id="layout-report">(.*?)</pre>', done.stdout, flags=re.DOTALL)
    assert match, f"{page} @{width}px: no report from the browser: {done.stderr[-1000:]}"
    return list(json.loads(html.unescape(match.group(1))))


@pytest.mark.timeout(300)
def test_every_page_fits_its_content_column(site: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    checked = tmp_path / "checked"
    shutil.copytree(site, checked)
    pages = sorted(p for p in checked.rglob("index.html") if p.parent.name != "search")
    assert checked / "benchmarks" / "index.html" in pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        page.write_text(text.replace("</body>", _CHECK + "</body>", 1), encoding="utf-8")
    jobs = [(page, width) for page in pages for width in WIDTHS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        found = pool.map(lambda job: _problems(chromium, *job), jobs)
        problems = {
            f"{page.relative_to(checked)} @{width}px": lines
            for (page, width), lines in zip(jobs, found, strict=True)
            if lines
        }
    assert problems == {}, json.dumps(problems, indent=1)


@pytest.mark.timeout(120)
def test_screenshots_of_the_benchmark_page(site: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    keep = os.environ.get("DOCS_SCREENSHOTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        shot = folder / f"benchmarks-{width}.png"
        done = _browser(
            chromium,
            f"--window-size={width},6000",
            f"--screenshot={shot}",
            (site / "benchmarks" / "index.html").as_uri(),
        )
        assert shot.is_file(), done.stderr[-2000:]
        header = shot.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(header[16:20], "big") == width
