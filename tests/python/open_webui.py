"""Open WebUI in a real browser: Debian's Chromium (headless), driven by Playwright, opens the
UI, reads the model selector, and for each model named on the command line starts a chat,
sends a message and watches the assistant's reply stream in. Any request of the page to a
host other than loopback is refused and reported.

usage: open_webui.py UI_URL MODEL...
prints one JSON object:
  {"models": [ids in the selector],
   "chats": {MODEL: {"text": the final reply, "partials": how many distinct texts it showed}},
   "off_loopback": [URLs the page asked for outside loopback]}
"""

import json
import shutil
import sys
import time
from urllib.parse import urlsplit

from playwright.sync_api import sync_playwright

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def chromium() -> str:
    """Debian's `chromium` (apt): Playwright's own browser downloads are never used."""
    path = shutil.which("chromium")
    if path is None:
        sys.exit("chromium is not installed: run scripts/test, which installs Debian's `chromium`")
    return path


def open_chat(page, url: str):
    """A new chat, with the What's New dialog a first visit shows out of the way."""
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#chat-input").wait_for(timeout=60_000)
    dialog = page.get_by_role("button", name="Okay, Let's Go!")
    try:
        dialog.wait_for(timeout=3_000)
        dialog.click()
    except Exception:
        pass


def selector_models(page) -> list[str]:
    """The model ids the selector lists (it names its options "Select ID model")."""
    page.locator("#model-selector-model-button").click()
    options = page.locator("#model-selector-list [role=option]")
    options.first.wait_for(timeout=30_000)
    names = []
    for label in options.evaluate_all("els => els.map(e => e.getAttribute('aria-label'))"):
        names.append(label.removeprefix("Select ").removesuffix(" model"))
    return names


# Records in the page every distinct text of the last assistant message, as the DOM changes:
# sampling from Python could miss a reply that streams faster than a round trip.
WATCH_REPLY = """() => {
  window.__replies = [];
  const record = () => {
    const all = document.querySelectorAll('.chat-assistant #response-content-container');
    const text = all.length ? all[all.length - 1].innerText.trim() : '';
    const seen = window.__replies;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  };
  new MutationObserver(record).observe(document.body,
    {subtree: true, childList: true, characterData: true});
}"""


def chat(page, model: str, prompt: str) -> dict:
    """Selects `model`, sends `prompt`, and waits for the reply to complete."""
    page.get_by_role("option", name=f"Select {model} model", exact=True).click()
    selected = page.locator("#model-selector-model-button").get_attribute("aria-label")
    assert selected == f"Selected model: {model}", selected
    page.locator("#chat-input").fill(prompt)
    page.evaluate(WATCH_REPLY)
    page.keyboard.press("Enter")
    reply = page.locator(".chat-assistant #response-content-container").last
    stop = page.get_by_role("button", name="Stop", exact=True)
    reply.wait_for(timeout=60_000)
    deadline = time.monotonic() + 180
    while not (reply.inner_text().strip() and stop.count() == 0):
        if time.monotonic() > deadline:
            print(page.inner_text("body")[-3000:], file=sys.stderr)
            raise TimeoutError(f"the reply of {model} did not complete")
        time.sleep(0.1)
    partials = page.evaluate("() => window.__replies")
    return {"text": reply.inner_text().strip(), "partials": len(partials)}


def main():
    url, models = sys.argv[1], sys.argv[2:]
    off_loopback = []

    def only_loopback(route):
        request_url = route.request.url
        if request_url.startswith(("data:", "blob:")) or urlsplit(request_url).hostname in LOOPBACK:
            route.continue_()
        else:
            off_loopback.append(request_url)
            route.abort()

    result = {"chats": {}}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", only_loopback)
            page = context.new_page()
            open_chat(page, url)
            result["models"] = selector_models(page)
            page.keyboard.press("Escape")
            for model in models:
                open_chat(page, url)
                page.locator("#model-selector-model-button").click()
                result["chats"][model] = chat(page, model, "Say hello in one short sentence.")
        finally:
            browser.close()
    result["off_loopback"] = off_loopback
    print(json.dumps(result))


if __name__ == "__main__":
    main()
