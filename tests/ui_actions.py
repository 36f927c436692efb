"""What the browser tests do on the page: find, pick, type, send, drop a file, read answers."""

from __future__ import annotations

import base64

from tests.ui_support import wait_for


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    options = "return document.querySelectorAll('#model option').length"
    wait_for(lambda: driver.execute_script(options), what="the model list")


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


def drop_file(driver, name: str, mime: str, data: bytes) -> None:
    """Drop a file on the message box as a user dragging it from the desktop would."""
    driver.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[2]), c => c.charCodeAt(0));"
        "const dt = new DataTransfer();"
        "dt.items.add(new File([bytes], arguments[0], {type: arguments[1]}));"
        "for (const type of ['dragover', 'drop']) document.querySelector('#composer')"
        ".dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));",
        name, mime, base64.b64encode(data).decode(),
    )  # fmt: skip


def answered(driver, timeout: float = 120, what: str = "the answer") -> dict:
    return wait_for(lambda: (a := last_answer(driver)) and a["state"] != "streaming" and a,
                    timeout=timeout, what=what)  # fmt: skip
