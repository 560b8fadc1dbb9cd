"""report.html in a real headless Chromium: every image decodes and the page requests only itself.

A loopback HTTP server serves report.html and logs every request. It appends a small probe
script to the page it serves (the report's own script only filters its comparison tables): on the window's load event,
which waits for every image, the probe counts the images that failed to load or decode
(``naturalWidth == 0``) synchronously and writes the counts into the DOM, which ``--dump-dom``
prints. (An earlier probe awaited ``img.decode()`` promises; on a loaded 2-core CI machine
those could settle after Chromium had already dumped the DOM.) CI installs Debian's ``chromium`` package; without it the test is skipped.

The per-example comparison is driven the same way: a probe types into its search box, ticks
its "systems disagree" filter and reads back which rows are visible.
"""

from __future__ import annotations

import http.server
import re
import subprocess
import threading
from pathlib import Path

import pytest

from tests.test_report_fixtures import make_study_runs
from tunebench.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
PROBE = b"""<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
  const out = document.createElement('div');
  out.id = 'probe';
  out.textContent = 'images=' + images.length + ' broken=' + broken;
  document.body.appendChild(out);
});
</script>"""


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    """Serve report.html (with the probe) and log every request path; anything else is a 404."""
    requests: list[str] = []
    page = (folder / "report.html").read_bytes().replace(b"</body>", PROBE + b"</body>")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path != "/report.html":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        do_POST = do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (CI installs it)"
)
def test_report_html_images_decode_and_nothing_is_requested(tmp_path: Path) -> None:
    out = write_report(make_study_runs(tmp_path / "runs", n=8), tmp_path / "report")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') >= 5
    server, requests = serve(out)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/report.html"
        result = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-2000:]
    probe = re.search(r'<div id="probe">images=(\d+) broken=(\d+)</div>', result.stdout)
    assert probe, "probe did not run:\n" + result.stdout[-1000:]
    images, broken = int(probe.group(1)), int(probe.group(2))
    assert images == html.count("<img ") and images >= 5
    assert broken == 0
    assert requests == ["/report.html"]


# Types into the second comparison's search box, ticks its filter, then clears the search, and
# records after each step which rows are visible (offsetParent is null for a hidden row); also
# whether the page is wider than the window (a table that does not wrap a long word).
INTERACT = b"""<script>
window.addEventListener('load', () => {
  const box = document.querySelectorAll('.compare')[0];
  const search = box.querySelector('.compare-search');
  const visible = () => Array.from(box.querySelectorAll('tbody tr'))
    .filter(r => r.offsetParent !== null).map(r => r.cells[0].textContent);
  const steps = {initial: visible()};
  search.value = QUERY;
  search.dispatchEvent(new Event('input'));
  steps.searched = visible();
  box.querySelector('.compare-disagree').click();
  steps.searched_disagree = visible();
  search.value = '';
  search.dispatchEvent(new Event('input'));
  steps.disagree = visible();
  steps.count = box.querySelector('.compare-count').textContent;
  steps.page_width = document.documentElement.scrollWidth;
  steps.window_width = document.documentElement.clientWidth;
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(steps);
  document.body.appendChild(out);
});
</script>"""


def chromium_dom(url: str, profile: Path) -> str:
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1200,900", "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (CI installs it)"
)
def test_per_example_comparison_search_and_disagree_filter(tmp_path: Path) -> None:
    import html as html_lib
    import json

    from tests.test_report_fixtures import make_custom_runs
    from tunebench.io import read_jsonl
    from tunebench.report.build import COMPARISON_INPUT_CHARS, COMPARISON_OUTPUT_CHARS, short

    systems = ("oracle", "halfway", "unbroken")
    runs = make_custom_runs(tmp_path / "runs", n=10, systems=systems)
    out = write_report(runs, tmp_path / "report")
    predictions = {s: read_jsonl(runs / f"{s}-custom/predictions/test.jsonl") for s in systems}
    ids = [r["id"] for r in predictions["oracle"]]
    # what each row shows, as the report cuts it; the query is a word of the first example's input
    shown = {
        id_: " ".join(
            [id_, short(predictions["oracle"][i]["prompt"], COMPARISON_INPUT_CHARS)]
            + [
                short(predictions[s][i][k], COMPARISON_OUTPUT_CHARS)
                for s in systems
                for k in ("gold", "prediction")
            ]
        ).lower()
        for i, id_ in enumerate(ids)
    }
    query = (
        predictions["oracle"][0]["gold"].split("[", 2)[1].split("]")[0].split()[0]
    )  # first slot's first word
    matching = [i for i in ids if query.lower() in shown[i]]
    disagree = [
        id_
        for i, id_ in enumerate(ids)
        if len({" ".join(predictions[s][i]["prediction"].split()) for s in systems}) > 1
    ]
    assert 0 < len(matching) < len(ids) and 0 < len(disagree) < len(ids)
    assert set(matching) & set(disagree) and set(matching) - set(disagree)  # the filter removes some matches

    probe = INTERACT.replace(b"QUERY", json.dumps(query).encode())
    page = (out / "report.html").read_bytes().replace(b"</body>", probe + b"</body>")
    (out / "probe.html").write_bytes(page)
    dom = chromium_dom((out / "probe.html").as_uri(), tmp_path / "profile")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, "probe did not run:\n" + dom[-1000:]
    steps = json.loads(html_lib.unescape(found.group(1)))
    assert steps["initial"] == ids
    assert steps["searched"] == matching
    assert steps["searched_disagree"] == [i for i in matching if i in disagree]
    assert steps["disagree"] == disagree
    assert steps["count"] == f"{len(disagree)} of {len(ids)} examples shown"
    # the unbroken 800-character answers wrap inside their cells: the page is not wider than the window
    assert max(len(r["prediction"]) for r in predictions["unbroken"]) > 500
    assert steps["page_width"] <= steps["window_width"]
