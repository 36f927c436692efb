"""The page at / driven in a real headless Chromium against a real server on 127.0.0.1.

Screenshots of each step go to a folder printed when the module ends.
"""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.ui_actions import (
    answered,
    card_state,
    css,
    drop_file,
    last_answer,
    open_page,
    pick,
    send,
    set_field,
)
from tests.ui_support import (
    AXE,
    PageServer,
    build_models_dir,
    busy_model,
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
    """Print past pytest's output capture (the screenshots folder is for the person running)."""
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(text, flush=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory, request):
    """Screenshots folder: shots(driver, "name") writes NN-name.png there."""
    folder = tmp_path_factory.mktemp("ui_screenshots")
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


def test_chat_streams_in_pieces_and_stop_cancels_the_generation(page_server, driver, shots):
    open_page(driver, page_server.url)
    pick(driver, "smollm2")
    set_field(driver, "#temperature", "0")
    set_field(driver, "#max-tokens", "32")
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

    set_field(driver, "#max-tokens", "1000")
    send(driver, "Count from 1 to 500, one number per line.")
    wait_for(lambda: len((last_answer(driver) or {}).get("text", "")) > 12, timeout=60,
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
    assert int(steps[-1]) < 1000
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
    facts = 'li.model[data-model="tiny_text"] .facts'
    wait_for(lambda: "unloads in" in css(driver, facts).text, what="the keep-alive left")
    assert re.search(
        r"full precision · [\d.]+ (KB|MB) on cpu · unloads in \d+ min", css(driver, facts).text
    )
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

    # Pull shows the server's own answer: the error of an offline server (or of a server
    # without the route), read here by a plain client too.
    r = requests.post(page_server.url + "/admin/pull/tiny_absent", json={}, timeout=30)
    lines = r.text.strip().splitlines()
    expected = r.json()["error"] if not r.ok else json.loads(lines[-1]).get("error", "")
    css(driver, '[data-action="pull"][data-model="tiny_absent"]').click()
    shown = wait_for(
        lambda: css(driver, 'li.model[data-model="tiny_absent"] .err').text, what="pull"
    )
    assert expected and expected in shown, (expected, shown)


def test_media_to_vision_and_audio_models(page_server, driver, shots, tmp_path):
    from tests.factories.media import make_audio, make_image

    open_page(driver, page_server.url)
    pick(driver, "smollm2")
    assert css(driver, '[data-attach="image"]').get_attribute("disabled") is not None
    assert "takes text only" in css(driver, "#media-note").text
    pick(driver, "tiny_vl")
    assert css(driver, '[data-attach="image"]').get_attribute("disabled") is None
    assert css(driver, '[data-attach="audio"]').get_attribute("disabled") is not None
    assert "does not take audio" in css(driver, "#media-note").text
    drop_file(driver, "tone.wav", "audio/wav", make_audio("wav", seconds=0.5))
    wait_for(lambda: "tiny_vl does not take audio (tone.wav)" in css(driver, "#media-note").text,
             what="the dropped audio refused")  # fmt: skip
    image = tmp_path / "pattern.png"
    image.write_bytes(make_image("PNG", (64, 48)))
    css(driver, "#file-image").send_keys(str(image))  # the file picker
    drop_file(driver, "dropped.png", "image/png", make_image("PNG", (32, 24)))
    wait_for(lambda: len(driver.find_elements("css selector", "#attachments li")) == 2,
             what="two attachments")  # fmt: skip
    set_field(driver, "#max-tokens", "8")
    send(driver, "What is in the pictures?")
    done = answered(driver, what="the vision answer")
    shots(driver, "vision-answer")
    assert done["state"] == "done", done
    assert re.search(r"\d+ tokens", done["meta"]), done
    widths = driver.execute_script(
        "return [...document.querySelectorAll('.msg.user img')].map(i => i.naturalWidth)"
    )
    assert widths == [64, 32]

    pick(driver, "tiny_audio")
    drop_file(driver, "tone.wav", "audio/wav", make_audio("wav", seconds=0.5))
    wait_for(lambda: driver.find_elements("css selector", "#attachments li"), what="audio chip")
    send(driver, "Describe the sound.")
    done = answered(driver, what="the audio answer")
    assert done["state"] == "done", done
    # the earlier images stay out: tiny_audio does not take them
    assert "2 earlier attachment(s) not sent" in css(driver, "#chat-status").text
    player = css(driver, ".msg.user audio")
    assert player.get_attribute("controls") is not None
    wait_for(lambda: driver.execute_script("return arguments[0].duration", player) > 0.4,
             what="the attached audio playable in the page")  # fmt: skip


def test_reasoning_is_folded_apart_from_the_answer(page_server, driver):
    open_page(driver, page_server.url)
    pick(driver, "tiny_think")  # its template opens the think block: all it says is reasoning
    set_field(driver, "#max-tokens", "6")
    send(driver, "Think.")
    assert answered(driver)["state"] == "done"
    fold = css(driver, ".msg.assistant details.reasoning")
    assert fold.is_displayed() and fold.get_attribute("open") is None
    assert driver.execute_script("return arguments[0].querySelector('.rtext').textContent", fold)
    assert last_answer(driver)["text"] == ""


def test_memory_bars_temp_files_and_emergency_cleanup(page_server, driver, shots):
    requests.post(page_server.url + "/admin/load/tiny_text", json={}, timeout=60).raise_for_status()
    open_page(driver, page_server.url)
    wait_for(
        lambda: driver.find_elements("css selector", '[data-bar="RAM"] [data-segment="tiny_text"]'),
        what="the RAM bar with tiny_text",
    )
    assert re.search(r"tiny_text [\d.]+ (KB|MB|GB)", css(driver, '[data-bar="RAM"] .legend').text)
    widths = driver.execute_script(
        "return [...document.querySelectorAll('[data-bar=\"RAM\"] .bar span')]"
        ".map(s => parseFloat(s.style.width))"
    )
    assert 99 <= sum(widths) <= 101, widths  # models, the rest of the server, others, free
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


def test_gpu_bar_splits_cuda_memory_by_model(page_server, driver):
    """The GPU bar, from a memory report as a CUDA server gives it (this machine has none)."""
    open_page(driver, page_server.url)
    bars = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import('/ui/static/js/memory.js').then(({renderBars}) => {"
        " renderBars({gpu_available: true, gpu_name: 'H200', gpu_total_gb: 140, gpu_free_gb: 100,"
        "  gpu_reserved_gb: 30, device: 'cuda', ram_budget_gb: 50, memory_warning: false,"
        "  system_ram: {total_gb: 64, available_gb: 40, process_rss_gb: 6}},"
        "  [{name: 'qwen_vl', state: 'loaded', bytes: 16 * 1024 ** 3, device: 'cuda:0'},"
        "   {name: 'minilm', state: 'loaded', bytes: 1024 ** 3, device: 'cpu'}]);"
        " done([...document.querySelectorAll('[data-bar]')].map(b => [b.dataset.bar,"
        "  [...b.querySelectorAll('.bar span')].map(s => [s.dataset.segment,"
        "   parseFloat(s.style.width)])]));"
        "});"
    )
    gpu, ram = dict(bars)["GPU H200"], dict(bars)["RAM"]
    assert [name for name, _ in gpu] == [
        "qwen_vl",
        "other of this server",
        "other processes",
        "free",
    ]
    assert abs(dict(gpu)["qwen_vl"] - 100 * 16 / 140) < 0.01
    assert abs(dict(gpu)["other of this server"] - 100 * 14 / 140) < 0.01  # reserved, not a model
    assert abs(sum(w for _, w in gpu) - 100) < 0.1
    assert [name for name, _ in ram][0] == "minilm"  # a model on the CPU counts in RAM


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": CITY,
                "description": "The weather in a city."}}  # fmt: skip


def test_structured_output_and_tool_calls_from_the_advanced_fold(page_server, driver, shots):
    from selenium.webdriver.support.ui import Select

    open_page(driver, page_server.url)
    pick(driver, "smollm2")
    set_field(driver, "#temperature", "0")
    set_field(driver, "#max-tokens", "48")
    css(driver, "#advanced summary").click()
    set_field(driver, "#json-schema", '{"type": "object",')
    send(driver, "Where is the Eiffel Tower?")
    error = wait_for(lambda: css(driver, "#json-schema-error").text, what="the inline JSON error")
    assert error.startswith("Not sent:"), error
    assert css(driver, "#json-schema").get_attribute("aria-invalid") == "true"
    assert not driver.find_elements("css selector", ".msg"), "invalid JSON was sent"
    shots(driver, "advanced-invalid-json")

    set_field(driver, "#json-schema", json.dumps(CITY))
    send(driver, "Where is the Eiffel Tower? Answer with the city.")
    seen = set()

    def finished():
        answer = last_answer(driver)
        if answer and answer["state"] == "streaming" and answer["text"]:
            seen.add(answer["text"])
        return answer and answer["state"] != "streaming" and answer

    done = wait_for(finished, timeout=120, every=0.02, what="the structured answer")
    assert done["state"] == "done", done
    assert len(seen) >= 2, f"the JSON answer did not stream in: {sorted(seen)}"
    assert not css(driver, "#json-schema-error").is_displayed()
    answer = json.loads(done["text"])
    assert isinstance(answer["city"], str) and answer["city"], answer
    shots(driver, "advanced-json-schema")

    set_field(driver, "#json-schema", json.dumps({"type": "object", "properties": {"a": 5}}))
    send(driver, "Again.")
    done = answered(driver, what="the bad schema's 400")
    assert done["state"] == "error" and "response_format" in done["meta"], done

    set_field(driver, "#json-schema", "")
    set_field(driver, "#tools", json.dumps([WEATHER_TOOL]))
    choices = [o.get_attribute("value") for o in Select(css(driver, "#tool-choice")).options]
    assert choices == ["auto", "required", "none", "function:get_weather"], choices
    Select(css(driver, "#tool-choice")).select_by_value("required")
    send(driver, "What is the weather in Paris?")
    done = answered(driver, what="the tool call")
    assert done["state"] == "done" and "finish: tool_calls" in done["meta"], done
    calls = driver.execute_script(
        "return [...[...document.querySelectorAll('.msg.assistant')].pop()"
        ".querySelectorAll('.tool-call')].map(c => [c.querySelector('.tool-name').textContent,"
        " c.querySelector('.tool-args').textContent])"
    )
    assert calls and all(name == "Tool call: get_weather" for name, _ in calls), calls
    for _, args in calls:
        arguments = json.loads(args)
        assert set(arguments) >= {"city"} and isinstance(arguments["city"], str), arguments
    shots(driver, "advanced-tool-call")


def test_accessibility_scan_has_no_serious_violations(page_server, driver):
    open_page(driver, page_server.url)
    pick(driver, "tiny_think")  # a conversation with an answer and a reasoning fold in it
    set_field(driver, "#max-tokens", "4")
    send(driver, "hi")
    answered(driver)
    css(driver, "#advanced summary").click()  # the fold open, an inline JSON error in it
    set_field(driver, "#tools", "[{")
    wait_for(lambda: css(driver, "#tools-error").is_displayed(), what="the tools box's error")
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
        for selector in (
            "#model",
            "#prompt",
            "#send",
            "#stop",
            '[data-action="load"]',
            "#emergency",
            "#advanced summary",
            "#json-schema",
            "#tools",
            "#tool-choice",
        ):
            if selector == "#json-schema":
                css(driver, "#advanced summary").click()
            rect = driver.execute_script(
                "const r = arguments[0].getBoundingClientRect();"
                "return {l: r.left, r: r.right, w: r.width, h: r.height}",
                css(driver, selector),
            )
            assert rect["l"] >= 0 and rect["r"] <= 390, (selector, rect)
            assert rect["w"] >= 24 and rect["h"] >= 24, (selector, rect)
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"horizontal overflow with the Advanced fold open: {width} px"
        driver.execute_script("arguments[0].scrollIntoView()", css(driver, "#advanced"))
        shots(driver, "narrow-390-advanced")
        pick(driver, "tiny_text")
        set_field(driver, "#max-tokens", "4")
        send(driver, "hi")
        done = wait_for(lambda: (a := last_answer(driver)) and a["state"] != "streaming" and a,
                        timeout=60, what="an answer at 390 px")  # fmt: skip
        assert done["state"] == "done", done
        shots(driver, "narrow-390")
        load = css(driver, '[data-action="load"][data-model="tiny_vl"]')
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", load)
        load.click()  # a real click: Selenium fails it if anything covers the button
        wait_for(lambda: card_state(driver, "tiny_vl") == "loaded", timeout=60, what="loaded")
        shots(driver, "narrow-390-models")
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
    # Back with keys, one waiting request per model at most and no batching (for the 429).
    page_server.restart({"MMSERVE_API_KEY": "k-api", "MMSERVE_ADMIN_KEY": "k-admin",
                         "MMSERVE_MAX_QUEUE": "1", "MMSERVE_BATCH_MAX_SIZE": "1"})  # fmt: skip
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
    wait_for(
        lambda: driver.find_elements("css selector", "li.model")
        and "need the admin key" in css(driver, "#admin-note").text,
        what="the models without the admin controls",
    )
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

    with busy_model(page_server, "smollm2"):
        pick(driver, "smollm2")
        send(driver, "hi")
        done = wait_for(lambda: (a := last_answer(driver)) and a["state"] != "streaming" and a,
                        timeout=30, what="the 429")  # fmt: skip
        assert done["state"] == "error", done
        assert "has 1 requests waiting" in done["meta"] and "Retry in 2 s" in done["meta"], done
        shots(driver, "too-many-requests")
        wait_for(lambda: "You can retry now" in last_answer(driver)["meta"], timeout=10,
                 what="the countdown")  # fmt: skip
