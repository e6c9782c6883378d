"""The page at / in headless Chromium: type a query, click two results, read both lists.

Chromium is driven over the DevTools protocol through --remote-debugging-pipe (JSON messages ended
by NUL on file descriptors 3 and 4), so no client library is needed. Set DISTILLREC_PAGE_SCREENSHOT
to a .png path to keep a screenshot of the page with its lists.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from distillrec.params import ServeParams
from distillrec.serving.recommender import load
from distillrec.serving.server import create_app
from tests.test_serve import serving

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium, chromium-browser or google-chrome on "
                                "PATH (apt-get install chromium) to drive the page")


class Browser:
    """Headless Chromium and one page of it, driven over the DevTools pipe."""

    def __init__(self, profile: Path):
        to_browser, from_browser = os.pipe(), os.pipe()
        # out of the way of 3 and 4, where the browser expects its ends
        ours = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (*to_browser, *from_browser)]
        for fd in (*to_browser, *from_browser):
            os.close(fd)
        self._write, self._read = ours[1], ours[2]
        theirs_in, theirs_out = ours[0], ours[3]

        def wire() -> None:  # in the child: its command pipe on 3, its answer pipe on 4
            os.dup2(theirs_in, 3)
            os.dup2(theirs_out, 4)

        self.proc = subprocess.Popen(
            [BROWSER, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
             "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(theirs_in)
        os.close(theirs_out)
        self._ids, self._buffer, self.session = itertools.count(1), b"", None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=860, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict:
        message = {"id": next(self._ids), "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._read], [], [], left)[0]:
                    raise TimeoutError(f"no answer to {method} in {timeout} s")
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise ConnectionError("the browser closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == message["id"]:       # events (no id) are not needed here
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.05)
        return value

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView("
                      "{block: 'nearest'}); const r = e.getBoundingClientRect(); "
                      "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, text: str) -> None:
        """Key presses into the focused element."""
        for char in text:
            self.send("Input.dispatchKeyEvent", type="keyDown", text=char, key=char, unmodifiedText=char)
            self.send("Input.dispatchKeyEvent", type="keyUp", key=char)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


def list_ids(browser: Browser, name: str) -> list[str]:
    return browser.js(f"[...document.querySelectorAll('#{name}-list li')].map(li => li.dataset.itemId)")


def test_page_search_click_and_lists(release_dir, tmp_path):
    student, teacher = load(release_dir), load(release_dir / "teacher")
    app = create_app(student, teacher, ServeParams(max_history_items=3))
    with serving(app) as base:
        browser = Browser(tmp_path / "profile")
        try:
            browser.send("Page.navigate", url=base + "/")
            browser.wait("document.body && document.body.dataset.ready === 'true'")
            assert browser.js("document.getElementById('teacher-panel').hidden") is False
            browser.click("#q")
            browser.type("blue")
            browser.wait("document.getElementById('results').dataset.query === 'blue'")
            shown = browser.js("[...document.querySelectorAll('#results button')].map(b => b.textContent)")
            assert shown and all(text.startswith("blue item number") for text in shown), shown
            picked = browser.js("[...document.querySelectorAll('#results button')].slice(0, 2)"
                                ".map(b => b.dataset.itemId)")
            assert picked == ["i001", "i004"]               # blue item number 1, 4
            browser.click("#results li:nth-child(1) button")
            browser.click("#results li:nth-child(2) button")
            for name in ("student", "teacher"):
                browser.wait(f"document.getElementById('{name}-list').dataset.history === 'i001,i004' && "
                             f"document.getElementById('{name}-list').dataset.state === 'ready'")
            assert browser.js("[...document.querySelectorAll('#history li')].map(li => li.dataset.itemId)") == picked
            for name, model in (("student", student), ("teacher", teacher)):
                assert list_ids(browser, name) == model.recommend([picked], k=10)[0].item_ids
            assert browser.js("document.querySelectorAll('#student-list li .score')[0].textContent") == \
                f"{student.recommend([picked])[0].scores[0]:.3f}"
            if path := os.environ.get("DISTILLREC_PAGE_SCREENSHOT"):
                shot = browser.send("Page.captureScreenshot", format="png")["data"]
                Path(path).write_bytes(base64.b64decode(shot))

            browser.click("#history li:nth-child(1) button")          # remove i001
            browser.wait("document.getElementById('student-list').dataset.history === 'i004'")
            assert list_ids(browser, "student") == student.recommend([["i004"]], k=10)[0].item_ids

            browser.js("(() => { const k = document.getElementById('k'); k.value = '5'; "
                       "k.dispatchEvent(new Event('change')); })()")
            browser.wait("document.querySelectorAll('#student-list li').length === 5")

            for nth in (3, 4, 5):                                      # 4 items > max_history_items: the API's 422
                browser.click(f"#results li:nth-child({nth}) button")
            error = browser.wait("document.getElementById('student-list').dataset.state === 'error' && "
                                 "document.getElementById('student-error').textContent")
            assert error.startswith("history:") and "at most 3" in error, error
            assert browser.js("getComputedStyle(document.getElementById('student-error')).display") == "block"
        finally:
            browser.close()
