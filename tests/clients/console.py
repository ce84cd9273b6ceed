#!/usr/bin/env python3
"""Drives eventgate's browser console in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, through Selenium), for the Rust integration tests in tests/console.rs.

Each scenario opens the console, does what a person would (typing the token, filtering, uploading),
produces records with a real Kafka client (confluent-kafka, librdkafka) while the page is open,
and prints one JSON document of what the page showed, for the Rust test to assert on. Every wait has
a deadline. Screenshots of each view go to --shots.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait


def out(doc):
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


def browser(width=1280, height=900):
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="eg-chromium-")
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        f"--user-data-dir={profile}", f"--window-size={width},{height}",
    ]:
        opts.add_argument(flag)
    # Both paths are given, so Selenium Manager never looks for (or downloads) a driver.
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    try:
        d = webdriver.Chrome(service=service, options=opts)
    except Exception:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    d.set_page_load_timeout(20)
    d.eg_profile = profile
    return d


def close(d):
    """Stops the browser and removes its temporary profile."""
    try:
        d.quit()
    finally:
        shutil.rmtree(d.eg_profile, ignore_errors=True)


def wait(d, what, cond, timeout=10):
    """Waits for cond(d) to be truthy; fails the scenario with `what` after `timeout` seconds."""
    def safe(drv):
        try:
            return cond(drv)
        except StaleElementReferenceException:
            return False
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.05).until(safe)
    except TimeoutException:
        raise SystemExit(json.dumps({"error": f"timed out waiting for {what}", "status": text(d, "#status"),
                                     "ws_state": text(d, "#ws-state"), "logs": browser_log(d)}))


def text(d, css):
    try:
        return d.find_element(By.CSS_SELECTOR, css).text
    except Exception:
        return None


def browser_log(d):
    try:
        return [e["message"] for e in d.get_log("browser")][-20:]
    except Exception:
        return []


def shot(d, shots, name):
    if shots:
        os.makedirs(shots, exist_ok=True)
        d.save_screenshot(os.path.join(shots, f"{name}.png"))


def set_token(d, token):
    """Types the token into the console's dialog, as a person would."""
    d.find_element(By.ID, "token-button").click()
    wait(d, "the token dialog", lambda d: d.find_element(By.ID, "token-input").is_displayed())
    field = d.find_element(By.ID, "token-input")
    field.clear()
    field.send_keys(token)
    d.find_element(By.ID, "token-save").click()
    wait(d, "the token to be kept", lambda d: "token" in (text(d, "#auth-state") or "").lower())


def rows(d, testid):
    return d.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def cell(row, cls):
    try:
        return row.find_element(By.CSS_SELECTOR, f".{cls}").text
    except Exception:
        return None


def producer(bootstrap):
    from confluent_kafka import Producer
    return Producer({"bootstrap.servers": bootstrap, "client.id": "console-test", "linger.ms": 0})


def produce(p, topic, key, value):
    p.produce(topic, key=key.encode(), value=value.encode())
    left = p.flush(10)
    if left:
        raise SystemExit(json.dumps({"error": f"{left} record(s) not delivered to {topic}"}))


def row_with_key(d, key):
    for r in rows(d, "event-row"):
        if cell(r, "col-key") == key:
            return r
    return None


def unlabelled_fields(d):
    """Form fields a screen reader could not name."""
    return d.execute_script("""
        return [...document.querySelectorAll('input, select, textarea')]
            .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)
                      && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
            .map(e => e.id || e.name || e.outerHTML.slice(0, 60));
    """)


def low_contrast(d):
    """Visible text whose contrast with its background is below WCAG AA (4.5:1; 3:1 for large
    text), computed from the rendered colours."""
    return d.execute_script("""
        const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
        const lum = ([r, g, b]) => {
            const c = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
            return 0.2126 * c(r) + 0.7152 * c(g) + 0.0722 * c(b);
        };
        const background = e => {
            for (; e; e = e.parentElement) {
                const c = rgb(getComputedStyle(e).backgroundColor);
                if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
            }
            return [255, 255, 255];
        };
        const out = [];
        for (const e of document.querySelectorAll('body *')) {
            const own = [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
            if (!own || !e.getClientRects().length) continue;
            const st = getComputedStyle(e);
            if (st.visibility === 'hidden' || st.opacity === '0') continue;
            const fg = rgb(st.color).slice(0, 3), bg = background(e);
            const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
            const ratio = (hi + 0.05) / (lo + 0.05);
            const size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight, 10) >= 700;
            const large = size >= 24 || (bold && size >= 18.66);
            if (ratio < (large ? 3 : 4.5)) {
                out.push((e.id || e.className || e.tagName) + ': ' + ratio.toFixed(2) + ' "' + e.textContent.trim().slice(0, 30) + '"');
            }
        }
        return out;
    """)


def scenario_events(a):
    d = browser()
    try:
        d.get(a.url)
        set_token(d, a.token)
        wait(d, "the live feed", lambda d: "live" in (text(d, "#ws-state") or "").lower())
        p = producer(a.bootstrap)
        bad = '{"lumens": -1, "sentAt": "2026-11-26T10:00:00Z"}'
        started = time.monotonic()
        produce(p, a.topic, "k-invalid", bad)
        r = wait(d, "the invalid record's row", lambda d: row_with_key(d, "k-invalid"), timeout=10)
        appeared_ms = round((time.monotonic() - started) * 1000)
        row = {c: cell(r, c) for c in ["col-topic", "col-partition", "col-offset", "col-key", "col-type", "col-validation"]}
        badge = r.find_element(By.CSS_SELECTOR, ".badge").get_attribute("class")
        # Keyboard: the row is focusable and opens with Enter.
        d.execute_script("arguments[0].focus()", r)
        r.send_keys(Keys.ENTER)
        wait(d, "the event's errors", lambda d: rows(d, "validation-error"))
        errors = [e.text for e in rows(d, "validation-error")]
        detail_json = text(d, "#event-json")
        shot(d, a.shots, "events")

        # The topic filter: a record on another topic, then one on ours; only ours may show.
        f = d.find_element(By.ID, "filter-topic")
        f.clear()
        f.send_keys(a.topic)
        d.find_element(By.ID, "apply-filters").click()
        wait(d, "the filtered feed", lambda d: "live" in (text(d, "#ws-state") or "").lower())
        produce(p, a.other_topic, "k-other", '{"hello": "world"}')
        produce(p, a.topic, "k-after", '{"lumens": 5, "sentAt": "2026-11-26T10:00:01Z"}')
        wait(d, "the record after the filter", lambda d: row_with_key(d, "k-after"), timeout=10)
        topics_shown = sorted({cell(r, "col-topic") for r in rows(d, "event-row")})
        other_shown = row_with_key(d, "k-other") is not None

        # Pause, produce, resume: nothing produced meanwhile is missed.
        d.find_element(By.ID, "pause-button").click()
        wait(d, "the pause", lambda d: "paused" in (text(d, "#ws-state") or "").lower())
        produce(p, a.topic, "k-while-paused", '{"lumens": 6, "sentAt": "2026-11-26T10:00:02Z"}')
        d.find_element(By.ID, "pause-button").click()
        wait(d, "the record produced while paused", lambda d: row_with_key(d, "k-while-paused"), timeout=10)

        # A narrow window: the page must not scroll sideways (the table scrolls in its own box).
        d.set_window_size(390, 844)
        wait(d, "the narrow window", lambda d: d.execute_script("return window.innerWidth") <= 400)
        overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        shot(d, a.shots, "events-narrow")
        out({"appeared_ms": appeared_ms, "row": row, "badge": badge, "errors": errors, "detail_json": detail_json,
             "topics_shown_after_filter": topics_shown, "other_topic_shown": other_shown,
             "narrow_overflow_px": overflow, "unlabelled": unlabelled_fields(d),
             "low_contrast": low_contrast(d), "logs": browser_log(d)})
    finally:
        close(d)


def scenario_documents(a):
    d = browser()
    try:
        d.get(a.url)
        set_token(d, a.token)
        # Keyboard: reach the Documents tab and open it with Enter.
        tab = d.find_element(By.ID, "tab-documents")
        d.execute_script("arguments[0].focus()", tab)
        tab.send_keys(Keys.ENTER)
        wait(d, "the documents view", lambda d: d.find_element(By.ID, "view-documents").is_displayed())
        wait(d, "the documents list", lambda d: rows(d, "document-row"))
        listed = [r.text for r in rows(d, "document-row")]

        # A broken document: the error names its line and column and shows the line.
        d.find_element(By.ID, "document-id").send_keys("broken")
        d.find_element(By.ID, "document-text").send_keys(a.broken_text)
        d.find_element(By.ID, "upload-button").click()
        wait(d, "the upload error", lambda d: "line" in (text(d, "#upload-result") or "").lower())
        upload_error = text(d, "#upload-result")
        context = text(d, "#upload-error-context")
        d.execute_script("arguments[0].scrollIntoView({block: 'end'})", d.find_element(By.ID, "upload-result"))
        shot(d, a.shots, "documents-error")

        # A good document from a file.
        doc_id = d.find_element(By.ID, "document-id")
        doc_id.clear()
        doc_id.send_keys("uploaded")
        d.find_element(By.ID, "document-text").clear()
        d.find_element(By.ID, "document-file").send_keys(a.good_file)
        d.find_element(By.ID, "upload-button").click()
        wait(d, "the uploaded document in the list",
             lambda d: any("uploaded" in (cell(r, "col-id") or r.text) for r in rows(d, "document-row")))

        # Try a message against the demo document.
        wait(d, "the validate box's documents", lambda d: any(
            o.get_attribute("value") == a.doc for o in Select(d.find_element(By.ID, "validate-document")).options))
        Select(d.find_element(By.ID, "validate-document")).select_by_value(a.doc)
        v = d.find_element(By.ID, "validate-value")
        v.clear()
        v.send_keys('{"lumens": -3}')
        d.find_element(By.ID, "validate-button").click()
        wait(d, "the validation answer", lambda d: "outcome-" in (d.find_element(By.ID, "validate-result").get_attribute("class") or ""))
        result = d.find_element(By.ID, "validate-result")
        validate = {"class": result.get_attribute("class"), "text": result.text}
        d.execute_script("arguments[0].scrollIntoView({block: 'end'})", result)
        shot(d, a.shots, "documents")

        # Rates: the records the test produced before opening the page.
        d.find_element(By.ID, "tab-rates").click()
        wait(d, "the rates of the topic", lambda d: any(cell(r, "col-topic") == a.topic for r in rows(d, "rate-row")))
        rate = next({c: cell(r, c) for c in ["col-topic", "col-rate", "col-invalid-share", "col-refused"]}
                    for r in rows(d, "rate-row") if cell(r, "col-topic") == a.topic)
        sparkline = len(d.find_elements(By.CSS_SELECTOR, '[data-testid="rate-row"] svg'))
        shot(d, a.shots, "rates")

        # Subscriptions.
        d.find_element(By.ID, "tab-subscriptions").click()
        wait(d, "the subscription", lambda d: rows(d, "subscription-row"), timeout=15)
        subscription = rows(d, "subscription-row")[0].text
        shot(d, a.shots, "subscriptions")
        out({"listed": listed, "upload_error": upload_error, "error_context": context, "validate": validate,
             "rate": rate, "sparklines": sparkline, "subscription": subscription,
             "unlabelled": unlabelled_fields(d), "low_contrast": low_contrast(d), "logs": browser_log(d)})
    finally:
        close(d)


def scenario_wrong_token(a):
    d = browser()
    try:
        # The token a person typed earlier in this tab, now wrong (rotated on the server).
        d.get(a.url)
        d.execute_script("sessionStorage.setItem('eventgate.token', arguments[0])", a.token)
        d.refresh()
        wait(d, "the refusal", lambda d: "refused" in (text(d, "#status") or "").lower())
        wait(d, "the closed feed", lambda d: any(w in (text(d, "#ws-state") or "").lower() for w in ["closed", "refused"]))
        status = text(d, "#status")
        ws_state = text(d, "#ws-state")
        rows_shown = len(rows(d, "event-row"))
        shot(d, a.shots, "wrong-token")
        # Reads the server allows without a token still work.
        d.find_element(By.ID, "tab-documents").click()
        wait(d, "the documents list", lambda d: rows(d, "document-row"))
        out({"status": status, "ws_state": ws_state, "rows": rows_shown,
             "documents": len(rows(d, "document-row")), "logs": browser_log(d)})
    finally:
        close(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=["events", "documents", "wrong-token"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--bootstrap", default="")
    ap.add_argument("--topic", default="")
    ap.add_argument("--other-topic", default="")
    ap.add_argument("--doc", default="")
    ap.add_argument("--broken-text", default="")
    ap.add_argument("--good-file", default="")
    ap.add_argument("--shots", default="")
    a = ap.parse_args()
    {"events": scenario_events, "documents": scenario_documents, "wrong-token": scenario_wrong_token}[a.scenario](a)


if __name__ == "__main__":
    main()
