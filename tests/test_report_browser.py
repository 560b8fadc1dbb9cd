"""report.html in a real headless Chromium: every image decodes and the page requests only itself.

A loopback HTTP server serves report.html and logs every request. It appends a small probe
script to the page it serves (the report itself has no script): on the window's load event,
which waits for every image, the probe counts the images that failed to load or decode
(``naturalWidth == 0``) synchronously and writes the counts into the DOM, which ``--dump-dom``
prints. (An earlier probe awaited ``img.decode()`` promises; on a loaded 2-core CI machine
those could settle after Chromium had already dumped the DOM.) CI installs Debian's ``chromium`` package; without it the test is skipped.
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
