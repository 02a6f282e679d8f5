"""evaluate.py --report in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs
it) opens the page, takes a screenshot, applies filters as a user does, and the visible rows must
be the expected ones. Chromium is driven over its DevTools protocol on a pipe
(--remote-debugging-pipe: NUL-separated JSON on file descriptors 3 and 4), so no Python package is
needed. Skipped, with the reason, where no Chromium is installed.

    python -m pytest test_report.py -q
"""

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time

import pytest
from PIL import Image

import evaluate
from data import load_dataset

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)


class Browser:
    """One headless Chromium page driven over the DevTools protocol on a pipe."""

    def __init__(self, profile, width=1400, height=1000):
        to_chrome, self.commands = os.pipe()
        self.replies, from_chrome = os.pipe()

        def child_fds():  # Chromium reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "--hide-scrollbars", "about:blank"],
            pass_fds=(3, 4), preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self.buffer, self.count = b"", 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method, timeout=30, **params):
        self.count += 1
        message = {"id": self.count, "method": method, "params": params}
        if getattr(self, "session", None):
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buffer:
                if not select.select([self.replies], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"chromium: no reply to {method} in {timeout} s")
                chunk = os.read(self.replies, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.count:
                if "error" in reply:
                    raise RuntimeError(f"chromium: {method}: {reply['error']}")
                return reply["result"]

    def js(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"javascript: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url):
        self.js("document.body && delete document.body.dataset.shown")  # drawn again, also after a new #hash
        self.send("Page.navigate", url=url)
        for _ in range(100):  # the page draws its rows while it loads
            if self.js("document.readyState") == "complete" and self.js("document.body.dataset.shown") is not None:
                return
            time.sleep(0.1)
        raise TimeoutError(f"chromium: {url} did not finish loading")

    def screenshot(self):
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def visible(self):
        return self.js("[...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.key)")

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        os.close(self.commands)
        os.close(self.replies)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    opened = Browser(tmp_path / "profile")
    yield opened
    opened.close()


def completion(answer, think="I look at the scan."):
    return f"<think>{think}</think><answer>{answer}</answer>"


@pytest.fixture
def report(tmp_path, fixed_scorers):
    """A report of 30 phantom questions: model A is right on every third, with the reference
    rationale there, B on every other one."""
    records = load_dataset("phantom", "test", limit=30, phantom_wording="random")  # evaluate.py's default
    for name, right in (("a", lambda i: i % 3 == 0), ("b", lambda i: i % 2 == 0)):
        with open(tmp_path / f"{name}.jsonl", "w") as file:
            for i, r in enumerate(records):
                think = r.cot if name == "a" and right(i) else "I look at the scan."
                row = evaluate.prediction_row(r, completion(r.answer if right(i) else "zzz", think))
                file.write(json.dumps(row) + "\n")
    path = tmp_path / "report.html"
    evaluate.main(["--predictions", str(tmp_path / "a.jsonl"), "--compare", str(tmp_path / "b.jsonl"),
                   "--report", str(path), "--limit", "30", "--report-page-size", "20"])
    return path, records


def test_report_is_one_self_contained_file(report):
    path, records = report
    page = path.read_text()
    assert "http://" not in page and "https://" not in page and "src=\"" not in page  # nothing fetched
    data = json.loads(page.split('<script type="application/json" id=data>')[1].split("</script>")[0])
    assert [row["key"] for row in data["rows"]] == [f"phantom/{r.id}" for r in records]
    assert all(uri.startswith("data:image/jpeg;base64,") for uri in data["images"])
    assert len(data["images"]) == len({id(r.image) for r in records})  # each image once
    assert [row["right"] for row in data["rows"]] == [int(i % 3 == 0) for i in range(30)]
    assert data["compare"]["matched"] == 30
    # the reasoning metric in the metric tables: A states true facts and answers by them on 10 of 30
    assert "<th>fact acc</th><th>consist</th></tr>" in page
    phantom_rows = [row.split("</tr>")[0] for row in page.split("<tr>") if row.startswith("<td>phantom</td>")]
    assert [row.split("<td>")[-2:] for row in phantom_rows] == [["100.0</td>", "100.0</td>"], ["-</td>", "-</td>"]]


def test_report_filters_in_a_browser(report, browser, tmp_path):
    path, records = report
    keys = [f"phantom/{r.id}" for r in records]
    browser.open(path.as_uri())
    png = Image.open(io.BytesIO(browser.screenshot()))
    assert png.size == (1400, 1000) and len(png.convert("L").getcolors(256)) > 50  # drawn, not blank
    assert browser.visible() == keys[:20]  # a page of 20
    assert browser.js("document.querySelectorAll('#rows img.thumb').length") == 20
    browser.js("document.getElementById('next').click()")
    assert browser.visible() == keys[20:]

    browser.js("document.getElementById('wrong').click()")  # wrong only
    assert browser.visible() == [k for i, k in enumerate(keys) if i % 3][:20]
    browser.js("const s = document.getElementById('type'); s.value = 'closed'; s.dispatchEvent(new Event('change'))")
    wrong_closed = [k for i, (k, r) in enumerate(zip(keys, records)) if i % 3 and r.answer_type == "closed"]
    assert wrong_closed and browser.visible() == wrong_closed
    assert browser.js("location.hash") == "#wrong=1&type=closed"

    browser.open(path.as_uri() + "#category=SIDE")  # a filter set in the address
    side = [k for k, r in zip(keys, records) if r.category == "side"]
    assert side and browser.visible() == side
    browser.open(path.as_uri() + "#cmp=b")  # only B right: B right on even i, A on every third
    assert browser.visible() == [k for i, k in enumerate(keys) if i % 2 == 0 and i % 3]
    search = records[4].question
    browser.js(f"const q = document.getElementById('q'); q.value = {json.dumps(search)}; "
               "q.dispatchEvent(new Event('input'))")
    assert browser.visible() == [k for i, (k, r) in enumerate(zip(keys, records))
                                 if i % 2 == 0 and i % 3 and r.question == search]

    browser.js("document.querySelector('#rows img.thumb').click()")  # a thumbnail opens large
    assert browser.js("getComputedStyle(document.getElementById('overlay')).display") == "flex"
    (tmp_path / "report.png").write_bytes(browser.screenshot())
