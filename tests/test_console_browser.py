"""The web console in a real headless Chromium (Debian's package, driven by Playwright)
against a real daemon serving tiny llama.cpp models: the page loads and lists the models,
a chat streams and its stop button cancels the request on the server, admin actions show
in the list, a wrong key shows an error, and the layout fits a phone.

scripts/test.sh installs Chromium (apt, when root) and Playwright; without a browser these
tests are skipped, saying why. `CONSOLE_SCREENSHOTS=docs/img` also writes the screenshots
used in the docs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from appliance.api.state import RequestRecord
from appliance.auth import create_key
from test_api_support import serving, write_config

pytestmark = pytest.mark.browser

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install -e '.[dev]')")
async_playwright, expect = playwright_api.async_playwright, playwright_api.expect


def chromium_path() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


CHROMIUM = chromium_path()
if CHROMIUM is None:
    pytest.skip("no Chromium found (apt-get install chromium, or set CHROMIUM=/path)", allow_module_level=True)

# A bound for hung pages, not a speed requirement: this 2-core box runs other suites too.
expect.set_options(timeout=90_000)
LONG = 3800  # max_tokens of the chat that gets stopped: far more than the stop lets through


@pytest.fixture
def env(tmp_path: Path, tiny_models: dict[str, Path]):  # noqa: ANN201
    settings = write_config(tmp_path, {
        "tiny": {"source": f"file://{tiny_models['a']}", "context": 4096, "parallel": 2},
        "tiny-b": {"source": f"file://{tiny_models['b']}", "context": 256, "parallel": 1},
    })
    from appliance.store import Store, pull_model

    store = Store.open(settings.config.store.path)
    pull_model(store, "tiny", settings.catalog.models["tiny"], progress=False)  # tiny-b stays missing
    keys = {
        "admin": create_key(settings.keys_path, "root", scope="admin")[0],
        "user": create_key(settings.keys_path, "alice")[0],
    }
    return settings, store, keys


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def open_console(browser: Any, url: str, key: str | None, **ctx: Any) -> tuple[Any, list[str]]:
    """A fresh page with the console open (key typed in, if any) and a list that collects
    the page's console errors (a CSP violation shows up there)."""
    context = await browser.new_context(**ctx)
    page = await context.new_page()
    problems: list[str] = []

    def on_console(m: Any) -> None:
        # Chromium logs every 4xx/5xx; the page's first, keyless try (open mode?) and its
        # tries while the daemon starts are expected.
        if m.type == "error" and "status of 401" not in m.text and "status of 503" not in m.text:
            problems.append(m.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(url + "/")
    if key is not None:
        await page.fill("#key-input", key)
        await page.click("#key-use")
    return page, problems


def row(page: Any, model: str) -> Any:
    return page.locator(f'tr[data-model="{model}"]')


async def test_page_loads_lists_models_read_only_for_inference_keys(env, browser) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        page, problems = await open_console(browser, d.url, keys["user"])
        await expect(page.locator("#server-state")).to_have_text("serving")
        await expect(row(page, "tiny").get_by_test_id("state")).to_have_text("verified")
        await expect(row(page, "tiny-b").get_by_test_id("state")).to_have_text("missing")
        await expect(page.locator("#key-who")).to_have_text("alice (inference)")
        await expect(page.locator(".device")).to_have_count(1)  # RAM on a CPU box
        # read-only: no admin controls, no keys tab
        await expect(page.get_by_role("button", name="Unload")).to_have_count(0)
        await expect(page.get_by_role("button", name="Load")).to_have_count(0)
        await expect(page.get_by_role("tab", name="Keys")).to_be_hidden()
        # the key is in sessionStorage only: not in the URL, not in a cookie
        assert await page.evaluate("sessionStorage.getItem('appliance.key')") == keys["user"]
        assert keys["user"] not in page.url and await page.context.cookies() == []
        assert await page.evaluate("localStorage.length") == 0
        assert problems == []


async def test_wrong_key_shows_an_error(env, browser) -> None:  # noqa: ANN001
    settings, store, _ = env
    async with serving(settings, store=store) as d:
        page, _ = await open_console(browser, d.url, "sk-appl-not-a-real-key")
        await expect(page.locator("#error")).to_be_visible()
        await expect(page.locator("#error")).to_contain_text("invalid API key")
        await expect(page.locator("#server-state")).to_have_text("not connected")
        await expect(page.locator("tr[data-model]")).to_have_count(0)
        assert await page.evaluate("sessionStorage.getItem('appliance.key')") is None  # not kept


async def test_page_waits_for_a_starting_daemon(env, browser) -> None:  # noqa: ANN001
    """While pinned models load, the API answers 503 not_ready; the page still loads, says
    so, and connects by itself once the daemon serves."""
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        d.state.ready = False
        page, _ = await open_console(browser, d.url, keys["user"])
        await expect(page.locator("#error")).to_contain_text("starting")
        d.state.ready = True
        await expect(page.locator("#server-state")).to_have_text("serving")
        await expect(page.locator("#error")).to_be_hidden()
        await expect(row(page, "tiny").get_by_test_id("state")).to_have_text("verified")


async def test_chat_streams_a_reply_and_stop_cancels_it_on_the_server(env, browser) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        finished: asyncio.Queue[RequestRecord] = asyncio.Queue()
        d.on_request(lambda r: finished.put_nowait(r) if r.path == "/v1/chat/completions" else None)
        page, problems = await open_console(browser, d.url, keys["user"])
        await page.get_by_role("tab", name="Chat").click()
        await expect(page.locator("#c-model")).to_have_value("tiny")
        await page.fill("#c-max-tokens", "12")
        await page.fill("#c-temperature", "0")
        await page.fill("#c-input", "Hello there")
        await page.click("#c-send")
        await expect(page.locator("#c-stats")).to_contain_text("finished: length")
        await expect(page.locator("#c-stats")).to_contain_text("tok/s")
        await expect(page.locator("#c-stats")).to_contain_text("TTFT")
        reply = page.locator('.msg[data-role="assistant"] .body').last
        assert (await reply.text_content()).strip()
        done = await finished.get()
        assert done.status == 200 and done.stream and done.completion_tokens == 12
        assert done.key_name == "alice"

        # a long reply, stopped once it streams: the server sees the client leave (499). The
        # page must stay responsive while tokens pour in (it once laid out the growing reply
        # per token, and on a busy machine answered nothing, Stop included, until the end).
        await page.fill("#c-max-tokens", str(LONG))
        await page.fill("#c-input", "Tell me a long story")
        await page.click("#c-send")
        streaming = page.locator('.msg.streaming[data-role="assistant"] .body')
        await expect(streaming).not_to_be_empty()  # this reply's tokens arrive
        await page.click("#c-stop")
        await expect(page.locator("#c-stats")).to_contain_text("stopped")
        stopped = await finished.get()
        assert stopped.status == 499 and stopped.completion_tokens < LONG
        await expect(page.locator("#c-send")).to_be_enabled()
        assert problems == []


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}}}


async def test_tool_calls_are_shown_as_such(env, browser) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        page, problems = await open_console(browser, d.url, keys["user"])
        await page.get_by_role("tab", name="Chat").click()
        await page.fill("#c-temperature", "0")
        await page.locator("summary", has_text="Tools").click()
        await page.fill("#c-tools", json.dumps([WEATHER]))
        await page.select_option("#c-tool-choice", "required")  # the grammar forces the call
        await page.fill("#c-input", "Weather?")
        await page.click("#c-send")
        await expect(page.locator("#c-stats")).to_contain_text("finished: tool_calls")
        calls = page.get_by_test_id("tool-call")  # the grammar allows several calls at once
        await expect(calls.first).to_contain_text("get_weather")
        for call in await calls.all():
            assert await call.locator("strong").text_content() == "get_weather"
            assert json.loads(await call.locator("pre").text_content())["unit"] in ("c", "f")
        assert await page.locator('.msg[data-role="assistant"] .body').last.text_content() == ""
        assert problems == []


async def test_admin_load_unload_pull_and_keys(env, browser) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        page, problems = await open_console(browser, d.url, keys["admin"])
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        tiny = row(page, "tiny")
        await tiny.get_by_role("button", name="Load").click()
        await expect(tiny.get_by_test_id("state")).to_have_text("loaded")
        await expect(tiny.get_by_role("button", name="Unload")).to_be_visible()
        assert [s.state for s in d.backend.snapshot() if s.id == "tiny"] == ["loaded"]
        await tiny.get_by_role("button", name="Unload").click()
        await expect(tiny.get_by_test_id("state")).to_have_text("verified")
        assert [s.state for s in d.backend.snapshot() if s.id == "tiny"] == ["unloaded"]

        other = row(page, "tiny-b")
        await other.get_by_role("button", name="Pull").click()
        await expect(other.get_by_test_id("state")).to_have_text("verified")
        assert store.state("tiny-b", settings.catalog.models["tiny-b"]).state == "verified"

        await page.get_by_role("tab", name="Keys").click()
        await page.fill("#k-name", "bob")
        await page.select_option("#k-scope", "inference")
        await page.get_by_role("button", name="Create").click()
        token = page.get_by_test_id("new-token")
        await expect(token).to_contain_text("sk-appl-")
        bob = (await token.text_content()).strip()
        assert await _status(d.url + "/v1/models", bob) == 200
        await expect(page.locator('tr[data-key="bob"]')).to_have_count(1)
        await page.locator('tr[data-key="bob"]').get_by_role("button", name="Revoke").click()
        await expect(page.locator('tr[data-key="bob"]')).to_have_count(0)
        assert await _status(d.url + "/v1/models", bob) == 401
        assert problems == []


async def _status(url: str, token: str) -> int:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status


async def test_fits_a_phone_screen(env, browser) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        page, problems = await open_console(browser, d.url, keys["admin"], viewport={"width": 390, "height": 844},
                                            device_scale_factor=2, is_mobile=True, has_touch=True)
        await expect(row(page, "tiny").get_by_test_id("state")).to_have_text("verified")
        for tab in ("Status", "Chat", "Keys"):
            await page.get_by_role("tab", name=tab).click()
            overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{tab}: {overflow}px wider than the screen"
        assert problems == []


async def test_json_mode_lines_up_with_the_other_chat_controls(env, browser) -> None:  # noqa: ANN001
    """The checkbox sits on the fields' left edge, its words beside it on one line (it once
    took the column's full width: drawn centred, its label squeezed onto two lines)."""
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        for viewport in ({"width": 1180, "height": 700}, {"width": 390, "height": 844}):
            page, problems = await open_console(browser, d.url, keys["user"], viewport=viewport)
            await page.get_by_role("tab", name="Chat").click()
            await expect(page.locator("#c-model")).to_have_value("tiny")
            box = await page.evaluate("""() => {
                const r = (sel) => document.querySelector(sel).getBoundingClientRect();
                const label = document.querySelector("#c-json").parentElement;
                return { model: r("#c-model").left, check: r("#c-json").left, checkWidth: r("#c-json").width,
                         label: label.getBoundingClientRect().height,
                         line: parseFloat(getComputedStyle(label).lineHeight) };
            }""")
            assert box["check"] == box["model"], (viewport, box)
            assert box["checkWidth"] < 2 * box["line"], (viewport, box)
            assert box["label"] < 2 * box["line"], (viewport, box)  # one line
            assert problems == []


@pytest.mark.skipif(not os.environ.get("CONSOLE_SCREENSHOTS"), reason="set CONSOLE_SCREENSHOTS=DIR to write them")
async def test_screenshots(env, browser, request: pytest.FixtureRequest) -> None:  # noqa: ANN001
    """The docs' pictures (console.png, console-chat.png, console-phone.png in the folder
    named by CONSOLE_SCREENSHOTS): a model loaded after a little traffic, one missing."""
    settings, store, keys = env
    # relative to where pytest was started: the tests run in a temporary directory
    out = request.config.invocation_params.dir / os.environ["CONSOLE_SCREENSHOTS"]
    async with serving(settings, store=store) as d:
        async with aiohttp.ClientSession() as s:
            for i in range(3):
                body = {"model": "tiny", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 32}
                async with s.post(d.url + "/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {keys['user']}"}) as r:
                    assert r.status == 200
        page, _ = await open_console(browser, d.url, keys["admin"], viewport={"width": 1180, "height": 640})
        await expect(row(page, "tiny").get_by_test_id("state")).to_have_text("loaded")
        await page.screenshot(path=out / "console.png", full_page=True)
        await page.get_by_role("tab", name="Chat").click()
        await page.fill("#c-system", "You are a terse assistant.")
        await page.fill("#c-max-tokens", "40")
        await page.fill("#c-input", "Say hello to the office")
        await page.click("#c-send")
        await expect(page.locator("#c-stats")).to_contain_text("finished")
        await page.screenshot(path=out / "console-chat.png")
        phone, _ = await open_console(browser, d.url, keys["admin"], viewport={"width": 390, "height": 844},
                                      device_scale_factor=1, is_mobile=True)
        await expect(row(phone, "tiny").get_by_test_id("state")).to_have_text("loaded")
        await phone.screenshot(path=out / "console-phone.png", full_page=True)
