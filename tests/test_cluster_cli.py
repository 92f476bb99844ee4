"""The cluster path and the dashboard as a user meets them with Ray 2.60's token authentication.

A real head is started with the `ray` CLI in a subprocess (tests/rayhead.py: private temp
dir, free ports, stopped by pid), and raystudy is run against it by explicit address, as the
README tells a new user to: without RAY_AUTH_MODE=token it must say what to do within
seconds; with it the smoke study runs. Then a study runs while headless Chromium logs in to
the head's dashboard with the token found the way raystudy says, and finds the study's
trials on the Actors page and its job on the Jobs page.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from rayhead import RAY, RayHead, driver_env

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = pytest.mark.slow   # a real Ray head, real trials


@pytest.fixture(scope="module")
def head():
    with RayHead(num_cpus=2) as h:
        yield h


def cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raystudy.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_explicit_address_says_what_to_do_then_runs_the_smoke_study(head, tmp_path):
    run = ("run", "studies/quickstart.yaml", "--smoke", "--address", head.address,
           "--results", str(tmp_path / "res"), "--no-dashboard")
    bare = cli(*run, env=driver_env(), timeout=120)
    assert bare.returncode == 2, bare.stderr[-2000:]
    err = bare.stderr
    assert "uses token authentication" in err and "RAY_AUTH_MODE=token" in err and "get-auth-token" in err
    assert "worker node" in err and "~/.ray/auth_token" in err
    # Refused before ray.init: no InvalidAuthToken retries, no "start a cluster" advice.
    assert "InvalidAuthToken" not in err and "ray start --head" not in err and "Traceback" not in err

    wrong = cli(*run, env=driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64), timeout=120)
    assert wrong.returncode == 2 and "refused this driver's authentication token" in wrong.stderr
    missing = cli(*run, env=driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "none")),
                  timeout=120)
    assert missing.returncode == 2 and "there is no token" in missing.stderr

    ok = cli(*run, env=head.auth_env())
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-3000:]
    assert "4/4 trials completed" in ok.stdout
    trials = pd.read_parquet(tmp_path / "res" / "quickstart" / "trials.parquet")
    assert (trials["status"] == "completed").all() and len(trials) == 4


# ------------------------------------------------------------------------- dashboard

class Page:
    """One Chromium tab over the DevTools protocol (aiohttp ships with Ray)."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params):
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg.get("result", {})

    async def js(self, expression: str):
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    async def wait_text(self, needles: list[str], timeout: float) -> str:
        t0, text = time.time(), ""
        while time.time() - t0 < timeout:
            text = await self.js("document.body ? document.body.innerText : ''") or ""
            if all(n in text for n in needles):
                return text
            await asyncio.sleep(1)
        raise AssertionError(f"not on the page after {timeout:.0f}s: {[n for n in needles if n not in text]}\n"
                             f"page text: {text[:3000]}")


LOGIN = """(() => {
  const input = document.querySelector('input[type=password], input[placeholder*="token" i]');
  if (!input) return false;
  input.focus();
  return true;
})()"""
SUBMIT = """(() => {
  const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim().toLowerCase() === 'submit');
  if (!b || b.disabled) return false;
  b.click();
  return true;
})()"""


async def dashboard_session(url: str, token: str, actors: list[str], job_text: str, shot: Path) -> dict:
    import aiohttp
    user_dir = tempfile.mkdtemp(prefix="raystudy-chromium-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", f"--user-data-dir={user_dir}",
         "--remote-debugging-port=0", "--window-size=1600,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url, t0 = None, time.time()
        while ws_url is None and time.time() - t0 < 60:
            m = re.search(r"DevTools listening on (ws://\S+)", proc.stderr.readline())
            ws_url = m.group(1) if m else None
        assert ws_url, "chromium did not start"
        port = re.search(r":(\d+)/", ws_url).group(1)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/json/list") as r:
                target = [t for t in await r.json(content_type=None) if t["type"] == "page"][0]
            async with s.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                await page.call("Page.navigate", url=url)
                seen: dict = {"login": await page.wait_text(["Authentication Token Required"], 90)}
                assert await page.js(LOGIN), "no token field in the login box"
                await page.call("Input.insertText", text=token)
                t0 = time.time()
                while not await page.js(SUBMIT):
                    assert time.time() - t0 < 30, "the Submit button stayed disabled"
                    await asyncio.sleep(0.5)
                await asyncio.sleep(3)   # the page reloads with the cookie set
                await page.call("Page.navigate", url=url.rstrip("/") + "/#/actors")
                seen["actors"] = await page.wait_text(actors, 180)
                shot.write_bytes(base64.b64decode((await page.call("Page.captureScreenshot", format="png"))["data"]))
                await page.call("Page.navigate", url=url.rstrip("/") + "/#/jobs")
                seen["jobs"] = await page.wait_text([job_text], 60)
                return seen
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(user_dir, ignore_errors=True)


LONG = """
name: live
data: {dataset: synthetic, train_size: 256, test_size: 64}
model: {arch: stdcnn_mnist, channels: [4, 4, 8, 8], hidden: 16}
train: {epochs: 400, batch_size: 32, checkpoint_every: 100}
space:
  seed: {grid: [0, 1]}
evaluate: [accuracy]
resources: {cpu: 1}
"""


def _wait_for_line(log: Path, proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return m
        assert proc.poll() is None, f"the driver exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no line matching {pattern!r} in {timeout}s:\n{log.read_text()[-3000:]}")


def test_dashboard_login_shows_the_running_studys_trials(head, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from raystudy.spec import load_study
    study = tmp_path / "live.yaml"
    study.write_text(LONG)
    ids = [t.trial_id for t in load_study(study).trials]
    log = tmp_path / "driver.log"
    with open(log, "w") as fh:
        driver = subprocess.Popen([sys.executable, "-m", "raystudy.cli", "run", str(study), "--address", head.address,
                                   "--results", str(tmp_path / "res")], cwd=ROOT, env=head.auth_env(),
                                  stdout=fh, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_line(log, driver, r"Ray dashboard at (http://\S+)", 180).group(1)
        assert url.rstrip("/").endswith(f":{head.dashboard_port}")
        printed = log.read_text()
        assert "get-auth-token" in printed and "live:<trial id>" in printed
        # The token, found the way raystudy says: `ray get-auth-token` in the driver's environment.
        token = subprocess.run([RAY, "get-auth-token"], env=head.auth_env(), capture_output=True, text=True,
                               timeout=60).stdout.strip()
        assert token == head.token
        seen = asyncio.run(dashboard_session(url, token, [f"live:{t}" for t in ids], "live.yaml",
                                             tmp_path / "actors.png"))
        assert "ray get-auth-token" in seen["login"]
        assert all(f"live:{t}" in seen["actors"] for t in ids)
        assert (tmp_path / "actors.png").stat().st_size > 10_000
        jobs = json.loads(subprocess.run(
            [RAY, "list", "jobs", "--detail", "--format", "json", "--address", head.dashboard_url],
            env=head.auth_env(), capture_output=True, text=True, timeout=60).stdout)
        meta = [j.get("metadata") or {} for j in jobs]
        assert any(m.get("raystudy.study") == "live" and m.get("raystudy.code") for m in meta), meta
    finally:
        driver.terminate()
        try:
            driver.wait(30)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait(10)
