"""The page at / driven in a real headless Chromium against a real server on 127.0.0.1.

Screenshots of each step go to a folder printed at the start and end of the module.
"""

from __future__ import annotations

import re
import struct
import zlib

import pytest
import requests

from tests.ui_support import (
    AXE,
    PageServer,
    build_models_dir,
    missing_browser,
    models_config,
    scratch_profile,
    start_chromium,
    wait_for,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser())),
]


def say(request, text: str) -> None:
    request.config.pluginmanager.get_plugin("terminalreporter").write_line(text)


@pytest.fixture(scope="module")
def shots(tmp_path_factory, request):
    """Screenshots folder: shots(driver, "name") writes NN-name.png there."""
    folder = tmp_path_factory.mktemp("ui_screenshots")
    say(request, f"\nbrowser test screenshots: {folder}")
    count = [0]

    def take(driver, name: str):
        count[0] += 1
        driver.save_screenshot(str(folder / f"{count[0]:02d}-{name}.png"))

    yield take
    say(request, f"\nbrowser test screenshots: {folder}")


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, tiny_models_dir, smollm2_models_dir):
    root = tmp_path_factory.mktemp("ui_server")
    models = build_models_dir(root, tiny_models_dir, smollm2_models_dir)
    server = PageServer(root, models, models_config(root))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def driver():
    drv = start_chromium(scratch_profile())
    yield drv
    drv.quit()


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait_for(lambda: driver.execute_script("return document.querySelectorAll('#model option').length"),
             what="the model list")  # fmt: skip


def pick(driver, model: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(css(driver, "#model")).select_by_value(model)
    wait_for(lambda: css(driver, "#model").get_attribute("value") == model, what=model)


def set_field(driver, selector: str, value: str) -> None:
    el = css(driver, selector)
    el.clear()
    el.send_keys(value)


def last_answer(driver):
    return driver.execute_script(
        "const m = [...document.querySelectorAll('.msg.assistant')].pop();"
        "return m ? {state: m.dataset.state, text: m.querySelector('.text').textContent,"
        " meta: m.querySelector('.meta').textContent} : null;"
    )


def send(driver, text: str) -> None:
    set_field(driver, "#prompt", text)
    css(driver, "#send").click()


def card_state(driver, model: str) -> str:
    return css(driver, f'li.model[data-model="{model}"]').get_attribute("data-state")


def png(path, width=32, height=24) -> None:
    """A small RGB PNG (a red-to-blue gradient), written without extra libraries."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in (255 * x // width, 64, 255 - 255 * x // width))
        for _ in range(height)
    )  # fmt: skip

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))  # fmt: skip


def test_chat_streams_in_pieces_and_stop_cancels_the_generation(page_server, driver, shots):
    open_page(driver, page_server.url)
    pick(driver, "smollm2")
    set_field(driver, "#max-tokens", "40")
    send(driver, "Name three colours.")
    seen = set()

    def finished():
        answer = last_answer(driver)
        if answer and answer["state"] == "streaming" and answer["text"]:
            seen.add(len(answer["text"]))
        return answer and answer["state"] != "streaming" and answer

    done = wait_for(finished, timeout=120, every=0.02, what="the answer")
    shots(driver, "chat-answer")
    assert done["state"] == "done", done
    assert len(seen) >= 3, f"the answer did not arrive in pieces: lengths seen {sorted(seen)}"
    assert done["text"].strip() and "tokens" in done["meta"]

    set_field(driver, "#max-tokens", "400")
    send(driver, "Write a very long story about a dragon who learns to sing.")
    wait_for(lambda: len((last_answer(driver) or {}).get("text", "")) > 30, timeout=60,
             what="the long answer to start")  # fmt: skip
    assert page_server.status("smollm2")["active"] == 1
    shots(driver, "chat-streaming")
    css(driver, "#stop").click()
    wait_for(lambda: last_answer(driver)["state"] == "stopped", timeout=10, what="stopped")
    wait_for(lambda: page_server.status("smollm2")["active"] == 0, timeout=10, what="active 0")
    steps = wait_for(
        lambda: re.findall(r"stream for smollm2 closed early after (\d+) steps", page_server.log()),
        timeout=10,
        what="the server's log of the cancelled stream",
    )
    assert int(steps[-1]) < 400
    assert "stopped" in last_answer(driver)["meta"]
    shots(driver, "chat-stopped")
    css(driver, "#copy").click()
    wait_for(lambda: "copied" in css(driver, "#chat-status").text, what="copy")
    css(driver, "#clear").click()
    assert not driver.find_elements("css selector", ".msg")


def test_load_unload_and_a_model_that_fails_to_load(page_server, driver, shots):
    open_page(driver, page_server.url)
    wait_for(lambda: css(driver, '[data-action="load"][data-model="tiny_text"]').is_displayed(),
             what="admin controls")  # fmt: skip
    assert card_state(driver, "tiny_text") == "unloaded"
    css(driver, '[data-action="load"][data-model="tiny_text"]').click()
    wait_for(lambda: card_state(driver, "tiny_text") == "loaded", timeout=60, what="loaded")
    facts = css(driver, 'li.model[data-model="tiny_text"] .facts').text
    assert "on cpu" in facts and "unloads in" in facts, facts
    shots(driver, "model-loaded")
    css(driver, '[data-action="unload"][data-model="tiny_text"]').click()
    wait_for(lambda: card_state(driver, "tiny_text") == "unloaded", timeout=30, what="unloaded")

    css(driver, '[data-action="load"][data-model="tiny_broken"]').click()
    error = wait_for(
        lambda: css(driver, 'li.model[data-model="tiny_broken"] .err').text, timeout=60,
        what="the load error",
    )  # fmt: skip
    assert "model 'tiny_broken' failed to load" in error, error
    assert card_state(driver, "tiny_broken") == "unloaded"
    shots(driver, "model-load-failed")


def test_image_to_the_vision_model(page_server, driver, shots, tmp_path):
    open_page(driver, page_server.url)
    pick(driver, "smollm2")
    assert css(driver, '[data-attach="image"]').get_attribute("disabled") is not None
    assert "takes text only" in css(driver, "#media-note").text
    pick(driver, "tiny_vl")
    assert css(driver, '[data-attach="image"]').get_attribute("disabled") is None
    assert css(driver, '[data-attach="audio"]').get_attribute("disabled") is not None
    assert "does not take audio" in css(driver, "#media-note").text
    image = tmp_path / "gradient.png"
    png(image)
    css(driver, "#file-image").send_keys(str(image))
    wait_for(lambda: driver.find_elements("css selector", "#attachments li"), what="the chip")
    set_field(driver, "#max-tokens", "8")
    send(driver, "What is in the picture?")
    done = wait_for(
        lambda: (a := last_answer(driver)) and a["state"] != "streaming" and a, timeout=120,
        what="the vision answer",
    )  # fmt: skip
    shots(driver, "vision-answer")
    assert done["state"] == "done", done
    assert re.search(r"\d+ tokens", done["meta"]), done
    thumb = css(driver, ".msg.user img")
    assert driver.execute_script("return arguments[0].naturalWidth", thumb) == 32


def test_memory_bars_temp_files_and_emergency_cleanup(page_server, driver, shots):
    requests.post(page_server.url + "/admin/load/tiny_text", json={}, timeout=60).raise_for_status()
    open_page(driver, page_server.url)
    segment = wait_for(
        lambda: driver.find_elements("css selector", '[data-bar="RAM"] [data-segment="tiny_text"]'),
        what="the RAM bar with tiny_text",
    )[0]
    assert segment.size["width"] >= 0 and "tiny_text" in css(driver, '[data-bar="RAM"]').text
    assert "Temp files:" in css(driver, "#temp-text").text
    shots(driver, "memory")
    css(driver, "#temp-clean").click()
    wait_for(lambda: "Removed" in css(driver, "#memory-status").text, what="temp clean")
    css(driver, "#emergency").click()
    assert css(driver, "#cleanup-dialog").get_attribute("open") is not None
    shots(driver, "emergency-confirm")
    css(driver, "#cleanup-confirm").click()
    report = wait_for(lambda: "Unloaded" in (t := css(driver, "#memory-status").text) and t,
                      timeout=30, what="the cleanup report")  # fmt: skip
    assert "tiny_text" in report and "GB of model memory freed" in report, report
    wait_for(lambda: card_state(driver, "tiny_text") == "unloaded", what="unloaded by cleanup")
    shots(driver, "emergency-report")


def test_accessibility_scan_has_no_serious_violations(page_server, driver):
    open_page(driver, page_server.url)
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact,"
        " nodes: v.nodes.map(n => n.target.join(' '))})))).catch(e => done(String(e)));"
    )
    assert isinstance(result, list), result
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert bad == [], bad


def test_works_at_390_px(page_server, driver, shots):
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        open_page(driver, page_server.url)
        wait_for(lambda: css(driver, '[data-action="load"][data-model="tiny_text"]').is_displayed(),
                 what="admin controls")  # fmt: skip
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"horizontal overflow: {width} px"
        for selector in ("#model", "#prompt", "#send", "#stop", '[data-action="load"]', "#emergency"):
            rect = driver.execute_script(
                "const r = arguments[0].getBoundingClientRect();"
                "return {l: r.left, r: r.right, w: r.width, h: r.height}", css(driver, selector))
            assert rect["l"] >= 0 and rect["r"] <= 390, (selector, rect)
            assert rect["w"] >= 24 and rect["h"] >= 24, (selector, rect)
        pick(driver, "tiny_text")
        set_field(driver, "#max-tokens", "4")
        send(driver, "hi")
        done = wait_for(lambda: (a := last_answer(driver)) and a["state"] != "streaming" and a,
                        timeout=60, what="an answer at 390 px")  # fmt: skip
        assert done["state"] == "done", done
        shots(driver, "narrow-390")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_server_down_then_keys_then_429(page_server, driver, shots):
    open_page(driver, page_server.url)
    page_server.stop()
    banner = wait_for(lambda: (b := css(driver, "#banner")).is_displayed() and b, timeout=15,
                      what="the server-down banner")  # fmt: skip
    assert "not answering" in banner.text
    shots(driver, "server-down")
    css(driver, "#banner-retry").click()
    wait_for(lambda: "still not answering" in css(driver, "#banner").text, what="retry failed")
    page_server.restart({"MMSERVE_API_KEY": "k-api", "MMSERVE_ADMIN_KEY": "k-admin",
                         "MMSERVE_MAX_QUEUE": "0"})  # fmt: skip
    assert requests.get(page_server.url + "/", timeout=10).status_code == 200
    assert requests.get(page_server.url + "/v1/models", timeout=10).status_code == 401
    css(driver, "#banner-retry").click()
    wait_for(lambda: not css(driver, "#banner").is_displayed(), what="the banner to go")
    # The server now wants keys: the page asks for them once.
    wait_for(lambda: css(driver, "#keys-dialog").get_attribute("open") is not None, what="keys")
    assert "needs an API key" in css(driver, "#keys-reason").text
    shots(driver, "keys-asked")
    set_field(driver, "#key-api", "k-api")
    css(driver, "#keys-save").click()
    wait_for(lambda: driver.execute_script("return document.querySelectorAll('li.model').length")
             and "need the admin key" in css(driver, "#admin-note").text, what="models, no admin")  # fmt: skip
    assert not css(driver, "#memory").is_displayed()
    assert not css(driver, '[data-action="load"][data-model="tiny_text"]').is_displayed()
    stored = driver.execute_script(
        "return [sessionStorage.getItem('mmserve.apiKey'), localStorage.length]"
    )
    assert stored == ["k-api", 0]
    css(driver, "#keys-open").click()
    set_field(driver, "#key-admin", "k-admin")
    css(driver, "#keys-save").click()
    wait_for(lambda: css(driver, "#memory").is_displayed(), what="admin controls with the key")

    pick(driver, "tiny_text")
    send(driver, "hi")
    done = wait_for(lambda: (a := last_answer(driver)) and a["state"] != "streaming" and a,
                    timeout=30, what="the 429")  # fmt: skip
    assert done["state"] == "error", done
    assert "requests waiting" in done["meta"] and "Retry in 2 s" in done["meta"], done
    shots(driver, "too-many-requests")
    wait_for(lambda: "You can retry now" in last_answer(driver)["meta"], timeout=10,
             what="the countdown")  # fmt: skip
