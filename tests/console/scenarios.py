"""Browser scenarios for the web console, run by tests/console.rs.

Usage: python scenarios.py SCENARIO PARAMS.json RESULTS.json

The Rust test starts the real daemon (API and console on 127.0.0.1), seeds
PostgreSQL through the real CLI, writes what the scenario needs (base URL,
tokens, ids) to PARAMS.json, runs one scenario here and checks the outcome
through the CLI afterwards. This script drives Debian's Chromium
(`executable_path`, never Playwright's own browser download) with
Playwright's sync API, writes what the Rust side must check to
RESULTS.json, and exits 1 with one clear message when the page does not
behave.

Every scenario also watches the whole page: an uncaught script error, a
Content-Security-Policy violation, a JavaScript dialog or a request that
leaves the console's own origin fails it.
"""

import json
import os
import subprocess
import sys
import time
from urllib.parse import urlsplit

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import sync_playwright, expect

TIMEOUT_MS = 15_000
UNFINISHED = ("PENDING", "SENDING", "RESENDING")


class Failure(Exception):
    """A scenario's check failed; the message says which and why."""


def check(cond, message):
    if not cond:
        raise Failure(message)


class Console:
    """One browser page on the console, with everything it did recorded.
    With NR_CONSOLE_SHOTS=DIR, every page it goes to is saved there as a
    screenshot."""

    shot = 0

    def __init__(self, browser, base, width=1280, height=900):
        self.base = base.rstrip("/")
        self.origin = urlsplit(self.base).netloc
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        self.page = self.context.new_page()
        self.requests = []
        self.problems = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught script error: {e}"))
        self.page.on("dialog", self._dialog)
        self.page.on("console", self._console)

    def _dialog(self, dialog):
        self.problems.append(f"a {dialog.type} dialog opened: {dialog.message!r}")
        dialog.dismiss()

    def _console(self, msg):
        text = msg.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            self.problems.append(f"CSP violation: {text}")

    def open(self, fragment=""):
        response = self.page.goto(f"{self.base}/console/{fragment}")
        headers = response.headers
        csp = headers.get("content-security-policy", "")
        check("script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp,
              f"the console is served without the strict Content-Security-Policy: {csp!r}")
        check(headers.get("x-content-type-options") == "nosniff", "the console is served without nosniff")
        check(headers.get("referrer-policy") == "no-referrer", "the console is served without no-referrer")

    def sign_in(self, token):
        """Signs in through the form, with the keyboard only."""
        self.open()
        token_box = self.page.locator("#token")
        expect(token_box).to_be_focused()
        self.page.keyboard.type(token)
        self.page.keyboard.press("Enter")
        self.wait_signed_in()

    def sign_in_by_link(self, token):
        """Opens the customer link /console/#token=…"""
        self.open(f"#token={token}")
        self.wait_signed_in()
        check("token=" not in self.page.url, f"the token is still in the address bar: {self.page.url}")
        stored = self.page.evaluate("() => sessionStorage.getItem('nr-console.token')")
        check(stored == token, "the token from the link was not kept in sessionStorage")

    def wait_signed_in(self):
        expect(self.page.locator("#nav")).to_be_visible()
        self.page.wait_for_function("() => (document.body.dataset.rendered || 'x') !== 'signin' && document.body.dataset.rendered !== undefined")
        self.no_error()

    def go(self, fragment):
        """Navigates inside the console (hash routing) and waits for the page."""
        self.page.evaluate("h => { location.hash = h; }", fragment)
        self.page.wait_for_function("h => document.body.dataset.rendered === h", arg=fragment)
        self.no_stray_text(fragment)
        shots = os.environ.get("NR_CONSOLE_SHOTS")
        if shots:  # for looking at every page a scenario visits
            Console.shot += 1
            name = "".join(ch if ch.isalnum() else "_" for ch in fragment)[:40]
            self.page.screenshot(path=os.path.join(shots, f"{os.getpid()}-{Console.shot:02}{name}.png"), full_page=True)

    def no_stray_text(self, where):
        """No JavaScript value leaked into the page as text ("null", …)."""
        stray = self.page.evaluate("""() => [...document.querySelectorAll('body, body *')]
            .flatMap((e) => [...e.childNodes])
            .filter((n) => n.nodeType === Node.TEXT_NODE)
            .map((n) => n.textContent.trim())
            .filter((t) => /^(null|undefined|NaN|\\[object Object\\])$/.test(t))""")
        check(not stray, f"{where}: the page shows {stray}")

    def accessible(self, where):
        """axe-core (WCAG 2 A/AA rules: labels, names, contrast, landmarks,
        …) finds nothing on the page as shown."""
        found = Axe().run(self.page).response["violations"]
        report = [f"{v['id']} ({v['impact']}) at {[n['target'] for n in v['nodes']][:3]}" for v in found]
        check(not report, f"{where}: accessibility violations: {report}")

    def no_error(self):
        box = self.page.locator("#error")
        if box.is_visible():
            raise Failure(f"the page shows an error: {box.inner_text()}")

    def finish(self):
        """The checks every scenario ends with."""
        check(not self.problems, "; ".join(self.problems))
        strays = [u for u in self.requests
                  if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != self.origin]
        check(not strays, f"requests left the console's origin: {strays}")
        self.context.close()


# --- scenarios ---------------------------------------------------------------


def namespace_isolation(browser, p, out):
    """A namespace token lists its own channels and events only; another
    namespace's event is not found; an admin token can switch namespaces;
    the keyboard reaches the pages; signing out forgets the token."""
    c = Console(browser, p["base"])
    c.open()
    c.accessible("the sign-in page")
    c.sign_in(p["token"])
    ns = c.page.locator("#namespace")
    expect(ns).to_have_value(p["namespace"])
    check(ns.get_attribute("readonly") is not None, "a namespace token can type another namespace")

    # Keyboard: Tab from the top reaches the "Channels" link; Enter opens it.
    c.page.locator("#skip").focus()
    for _ in range(10):
        c.page.keyboard.press("Tab")
        if c.page.evaluate("() => document.activeElement.textContent") == "Channels":
            break
    c.page.keyboard.press("Enter")
    expect(c.page.locator("main h1")).to_have_text("Channels")

    table = c.page.locator("#channels")
    for name in p["own_channels"]:
        expect(table.get_by_role("link", name=name, exact=True)).to_be_visible()
    text = table.inner_text()
    for name in p["other_channels"]:
        check(name not in text, f"another namespace's channel {name!r} is listed")

    c.go("#/events")
    events = c.page.locator("#events")
    for event_id in p["own_events"]:
        expect(events.locator(f"tr[data-event='{event_id}']")).to_have_count(1)
    for event_id in p["other_events"]:
        expect(events.locator(f"tr[data-event='{event_id}']")).to_have_count(0)

    # Another namespace's event, asked for by id: the API's 404 message.
    c.go(f"#/events/{p['other_events'][0]}")
    expect(c.page.locator("main h1")).to_have_text("Cannot show this page")
    expect(c.page.locator("#error")).to_contain_text("HTTP 404")

    c.page.get_by_role("button", name="Sign out").click()
    expect(c.page.locator("#signin-form")).to_be_visible()
    check(c.page.evaluate("() => sessionStorage.length") == 0, "sign-out left the token in sessionStorage")

    # An admin picks any namespace.
    c.sign_in(p["admin_token"])
    options = c.page.locator("#namespaces option")
    listed = [options.nth(i).get_attribute("value") for i in range(options.count())]
    for want in (p["namespace"], p["other_namespace"]):
        check(want in listed, f"admin namespace list {listed} lacks {want!r}")
    c.go("#/channels")
    c.page.locator("#namespace").fill(p["other_namespace"])
    c.page.locator("#namespace").press("Enter")
    expect(c.page.locator("#channels")).to_contain_text(p["other_channels"][0])
    check(p["own_channels"][0] not in c.page.locator("#channels").inner_text(),
          "after switching namespace the first namespace's channels are still listed")
    c.finish()


def event_detail(browser, p, out):
    """An event whose endpoint answered 500 then 200 shows both attempts;
    the resend button moves it to RESENDING and the page itself shows
    SUCCESS once the receiver got it again. Takes the README screenshot,
    then checks every page at 375 px wide: no sideways scrolling, and
    axe-core's accessibility rules pass."""
    c = Console(browser, p["base"], width=1200, height=900)
    c.sign_in_by_link(p["token"])
    c.go(f"#/events/{p['event_id']}")
    delivery = c.page.locator(f"article.delivery[data-channel='{p['channel_id']}']")
    expect(delivery).to_have_attribute("data-state", "SUCCESS")
    expect(delivery.locator("h3")).to_contain_text(p["channel_name"])
    statuses = delivery.locator("tr.attempt td.http-status")
    expect(statuses).to_have_text(["500", "200"])
    expect(delivery.locator("tr.attempt").first).to_contain_text("database is down")
    expect(c.page.locator("#payload")).to_contain_text('"invoice": "in_1042"')

    delivery.get_by_role("button", name="Resend").click()
    expect(c.page.locator("#notice")).to_contain_text("Resent to")
    expect(delivery).to_have_attribute("data-state", "RESENDING")
    out["saw_resending"] = True
    # No reload by the test: the page refreshes itself while unfinished.
    expect(delivery).to_have_attribute("data-state", "SUCCESS", timeout=30_000)
    expect(statuses).to_have_text(["500", "200", "200"])
    c.no_error()

    c.page.locator("#notice").evaluate("n => { n.hidden = true; }")
    c.page.screenshot(path=p["screenshot"], full_page=True)
    out["screenshot"] = p["screenshot"]

    c.page.set_viewport_size({"width": 375, "height": 800})
    for fragment in ("#/", "#/channels", "#/events", f"#/events/{p['event_id']}", f"#/channels/{p['channel_id']}", "#/recover",
                     "#/subscriptions", f"#/subscriptions/{p['rule_id']}", "#/event-types", "#/event-types/invoice.paid"):
        c.go(fragment)
        wide = c.page.evaluate("() => document.documentElement.scrollWidth")
        check(wide <= 375, f"{fragment} is {wide} px wide at a 375 px viewport (horizontal scrolling)")
        c.accessible(f"{fragment} at 375 px")
    c.finish()


def event_log(browser, p, out):
    """The event log pages through the API's cursor (newest first, no event
    twice, none left out) and filters by state, type, channel and time."""
    c = Console(browser, p["base"])
    c.sign_in(p["token"])

    def listed():
        return c.page.locator("#events tbody tr").evaluate_all("rows => rows.map((r) => r.dataset.event)")

    c.go("#/events?limit=2")
    seen = []
    for _ in range(10):
        seen += listed()
        older = c.page.locator("#older")
        if older.count() == 0:
            break
        fragment = older.get_attribute("href")
        older.click()
        c.page.wait_for_function("h => document.body.dataset.rendered === h", arg=fragment)
    check(seen == p["newest_first"], f"paging showed {seen}, expected {p['newest_first']}")

    def apply(**controls):
        form = c.page.locator("#event-filters")
        form.get_by_label("Type").fill(controls.get("type", ""))
        form.get_by_label("State").select_option(controls.get("state", ""))
        form.get_by_label("Channel").select_option(controls.get("channel", ""))
        form.get_by_label("Since").fill(controls.get("since", ""))
        form.get_by_role("button", name="Apply").click()
        c.page.wait_for_function("() => document.body.dataset.rendered === location.hash")
        c.no_stray_text("the filtered event log")
        return sorted(listed())

    c.go("#/events")
    got = apply(state="FAILED")
    check(got == sorted(p["failed"]), f"state FAILED listed {got}, expected {p['failed']}")
    got = apply(type="invoice.paid")
    check(got == sorted(p["paid"]), f"type invoice.paid listed {got}, expected {p['paid']}")
    got = apply(channel=p["failing_channel"])
    check(got == sorted(p["failed"]), f"channel filter listed {got}, expected {p['failed']}")
    got = apply(since="2000-01-01T00:00")
    check(got == sorted(p["newest_first"]), f"since 2000 listed {got}")
    got = apply(since="2999-01-01T00:00")
    check(got == [], f"since 2999 listed {got}")
    expect(c.page.locator("main .empty")).to_have_text("No events match.")
    c.no_error()
    c.finish()


def create_and_edit(browser, p, out):
    """A channel created and edited in the console, tested, its secret shown
    and rotated, then disabled; the Rust side compares `channel list --json`."""
    c = Console(browser, p["base"])
    c.sign_in(p["token"])
    c.go("#/channels")
    form = c.page.locator("#create-channel")
    form.get_by_label("Name").fill(p["name"])
    form.get_by_label("URL").fill(p["url"])
    form.get_by_label("Headers").fill("X-Team: billing")
    form.get_by_role("button", name="Create channel").click()
    expect(c.page.locator("main h1")).to_have_text(p["name"])
    expect(c.page.locator("#notice")).to_contain_text("created")
    out["channel_id"] = c.page.locator("main dl.facts code").first.inner_text()

    # A refused edit shows the API's message.
    edit = c.page.locator("#edit-channel")
    edit.get_by_label("URL").fill("ftp://127.0.0.1/hook")
    edit.get_by_role("button", name="Save changes").click()
    expect(c.page.locator("#error")).to_contain_text("Refused (HTTP 4")
    out["refused_message"] = c.page.locator("#error").inner_text()

    edit.get_by_label("Name").fill(p["new_name"])
    edit.get_by_label("URL").fill(p["new_url"])
    edit.get_by_label("Headers").fill("X-Team: payments\nX-Env: test")
    edit.get_by_role("button", name="Save changes").click()
    expect(c.page.locator("#notice")).to_contain_text("Channel saved.")
    expect(c.page.locator("#error")).to_be_hidden()
    expect(c.page.locator("main h1")).to_have_text(p["new_name"])
    expect(c.page.locator("#channel-url")).to_have_text(p["new_url"])

    c.page.get_by_role("button", name="Send test event").click()
    expect(c.page.locator("#notice")).to_contain_text("Test event sent")
    link = c.page.locator("#notice a").first
    out["test_event_id"] = link.inner_text()
    # Follow it until it is delivered, then come back (disabling the
    # channel first would fail the test event).
    link.click()
    expect(c.page.locator("main h1")).to_contain_text("webhook.test")
    expect(c.page.locator("article.delivery")).to_have_attribute("data-state", "SUCCESS", timeout=30_000)
    c.page.go_back()
    expect(c.page.locator("main h1")).to_have_text(p["new_name"])

    check(c.page.locator("#secret-value").count() == 0, "the secret is shown without being asked for")
    c.page.get_by_role("button", name="Show signing secret").click()
    expect(c.page.locator("#secret-value")).to_contain_text("whsec_")
    out["secret_before"] = c.page.locator("#secret-value").inner_text()

    rotate = c.page.locator("#rotate-secret")
    rotate.get_by_label("Overlap").fill("24h")
    rotate.get_by_role("button", name="Rotate secret").click()
    expect(c.page.locator("#notice")).to_contain_text("Secret rotated")
    c.page.get_by_role("button", name="Show signing secret").click()
    expect(c.page.locator("#secret-value")).to_contain_text("whsec_")
    out["secret_after"] = c.page.locator("#secret-value").inner_text()

    c.page.get_by_role("button", name="Disable").click()
    expect(c.page.get_by_role("button", name="Enable")).to_be_visible()
    c.no_error()
    c.finish()


HOSTILE_MARKERS = ("window.__pwned", "onerror")


def hostile_text(browser, p, out):
    """Names, payloads, headers and response bodies holding HTML render as
    text: no script runs, no dialog opens, no request for `x` is made. Each
    page also passes axe-core's accessibility rules."""
    c = Console(browser, p["base"])
    c.sign_in(p["token"])
    type_page = c.page.evaluate("t => '#/event-types/' + encodeURIComponent(t)", p["event_type"])
    pages = [
        "#/",
        "#/channels",
        f"#/channels/{p['channel_id']}",
        "#/events",
        f"#/events/{p['event_id']}",
        f"#/events?channel={p['channel_id']}",
        f"#/recover?channel={p['channel_id']}",
        "#/subscriptions",
        f"#/subscriptions/{p['rule_id']}",
        "#/event-types",
        type_page,
    ]
    for fragment in pages:
        c.go(fragment)
        c.page.wait_for_timeout(200)  # let any injected image or script try
        check(c.page.evaluate("() => window.__pwned === undefined"), f"{fragment}: an injected script ran")
        imgs = c.page.locator("main img, #notice img, #error img").count()
        check(imgs == 0, f"{fragment}: {imgs} <img> element(s) came from data")
        scripts = c.page.locator("script").count()
        check(scripts == 1, f"{fragment}: {scripts} <script> elements (only the module should exist)")
        c.accessible(fragment)
    c.go(f"#/channels/{p['channel_id']}")
    expect(c.page.locator("main h1")).to_have_text(p["channel_name"])
    expect(c.page.locator("#channel-headers")).to_contain_text(p["header_value"])
    c.go("#/channels")
    expect(c.page.locator("#channels").get_by_role("link", name=p["channel_name"], exact=True)).to_be_visible()
    c.go(f"#/events/{p['event_id']}")
    payload = json.loads(c.page.locator("#payload").inner_text())
    check(payload == p["payload"], f"payload shown as {payload!r}, sent {p['payload']!r}")
    expect(c.page.locator("article.delivery h3")).to_contain_text(p["channel_name"])
    expect(c.page.locator("tr.attempt pre.body").first).to_have_text(p["response_body"])
    # A rule name, an event type and a description holding markup stay text.
    c.go("#/subscriptions")
    row = c.page.locator(f"#rules tr[data-rule='{p['rule_id']}']")
    expect(row.get_by_role("link", name=p["rule_name"], exact=True)).to_be_visible()
    expect(row.get_by_role("link", name=p["event_type"], exact=True)).to_be_visible()
    c.go("#/event-types")
    row = c.page.locator("#event-types tbody tr").filter(has_text=p["description"])
    expect(row.locator("td.description")).to_have_text(p["description"])
    c.go(type_page)
    expect(c.page.locator("main h1")).to_have_text(p["event_type"])
    expect(c.page.locator("#type-description")).to_have_text(p["description"])
    c.go(f"#/subscriptions/{p['rule_id']}")
    expect(c.page.locator("main h1")).to_have_text(p["rule_name"])
    expect(c.page.locator("#rule-type-description")).to_have_text(p["description"])
    strays = [u for u in c.requests if urlsplit(u).path.endswith("/x")]
    check(not strays, f"a request for the injected image was made: {strays}")
    c.finish()


def read_only(browser, p, out):
    """A read-only token (signed in by a customer link) sees the pages
    without a single write button."""
    c = Console(browser, p["base"])
    c.sign_in_by_link(p["token"])
    expect(c.page.locator("#who")).to_contain_text("read-only")
    c.go("#/channels")
    expect(c.page.locator("#channels")).to_contain_text(p["channel_name"])
    check(c.page.locator("#create-channel").count() == 0, "the create form is offered to a read-only token")
    c.go(f"#/channels/{p['channel_id']}")
    for sel in ("#edit-channel", "#rotate-secret", "#disable", "#enable", "#send-test", "#delete"):
        check(c.page.locator(sel).count() == 0, f"{sel} is offered to a read-only token")
    expect(c.page.locator("main .note")).to_contain_text("read-only")
    check(c.page.locator("#show-secret").count() == 0, "the signing secret is offered to a read-only token")
    expect(c.page.locator("#channel-headers")).to_contain_text("X-Api-Key: ***")
    check(p["header_value"] not in c.page.content(), "a header value is shown to a read-only token")
    c.go(f"#/events/{p['event_id']}")
    expect(c.page.locator("article.delivery").first).to_be_visible()
    check(c.page.get_by_role("button", name="Resend").count() == 0, "a resend button is offered to a read-only token")
    c.go("#/recover")
    check(c.page.locator("#recover").count() == 0, "the recover form is offered to a read-only token")
    buttons = [b.strip() for b in c.page.locator("main button").all_inner_texts()]
    check(all(b in ("Refresh", "Apply") for b in buttons), f"unexpected buttons {buttons}")

    # Subscriptions and event types: seen, with no create/edit/delete.
    c.go("#/subscriptions")
    expect(c.page.locator(f"#rules tr[data-rule='{p['rule_id']}']")).to_contain_text(p["channel_name"])
    expect(c.page.locator(f"#rules tr[data-rule='{p['rule_id']}']")).to_contain_text(p["filter"])
    check(c.page.locator("#create-rule").count() == 0, "the subscription form is offered to a read-only token")
    expect(c.page.locator("main .note")).to_contain_text("read-only")
    c.go(f"#/subscriptions/{p['rule_id']}")
    expect(c.page.locator("#rule-filter")).to_have_text(p["filter"])
    for sel in ("#edit-rule", "#delete-rule", "#delete-rule-confirm"):
        check(c.page.locator(sel).count() == 0, f"{sel} is offered to a read-only token")
    c.go("#/event-types")
    expect(c.page.locator("#event-types")).to_contain_text(p["description"])
    check(c.page.locator("#event-types a.subscribe").count() == 0, "a Subscribe link is offered to a read-only token")
    c.go(f"#/event-types/{p['event_type']}")
    expect(c.page.locator("#type-description")).to_have_text(p["description"])
    for sel in ("#describe-type", "#subscribe"):
        check(c.page.locator(sel).count() == 0, f"{sel} is offered to a read-only token")
    c.go(f"#/channels/{p['channel_id']}")
    expect(c.page.locator("#channel-rules")).to_contain_text(p["event_type"])
    check(c.page.locator("#subscribe-channel").count() == 0, "a subscribe link is offered to a read-only token")
    for fragment in ("#/subscriptions", f"#/subscriptions/{p['rule_id']}", "#/event-types", f"#/event-types/{p['event_type']}"):
        c.go(fragment)
        forms = c.page.locator("main form").count()
        buttons = c.page.locator("main button").count()
        check(forms == 0 and buttons == 0, f"{fragment}: {forms} form(s) and {buttons} button(s) for a read-only token")
    c.no_error()
    c.finish()


def recover(browser, p, out):
    """The recover page counts with a dry run, then resends on a second click."""
    c = Console(browser, p["base"])
    c.sign_in(p["token"])
    c.go(f"#/recover?channel={p['channel_id']}")
    form = c.page.locator("#recover")
    expect(form.get_by_label("Channel")).to_have_value(p["channel_id"])
    form.get_by_label("Since").fill("1h")
    form.get_by_label("Deliveries in state").select_option("FAILED")
    form.get_by_role("button", name="Count deliveries").click()
    expect(c.page.locator("#recover-count")).to_contain_text(f"{p['expected']} deliveries would be resent")
    out["counted_at"] = time.time()
    c.page.locator("#recover-confirm").click()
    expect(c.page.locator("#recover-done")).to_contain_text(f"Resent {p['expected']} deliveries")
    c.no_error()
    c.finish()


def revoked(browser, p, out):
    """A token revoked while signed in returns the page to the sign-in form
    with the API's message."""
    c = Console(browser, p["base"])
    c.sign_in(p["token"])
    done = subprocess.run(p["revoke"], capture_output=True, text=True, timeout=60)
    check(done.returncode == 0, f"revoking failed: {done.stderr}")
    deadline = time.time() + 10
    while time.time() < deadline:
        c.page.locator("#nav a", has_text="Channels").click()
        c.page.wait_for_timeout(300)
        if c.page.locator("#signin-form").is_visible():
            break
        c.page.locator("#nav a", has_text="Overview").click()
        c.page.wait_for_timeout(300)
        if c.page.locator("#signin-form").is_visible():
            break
    expect(c.page.locator("#signin-form")).to_be_visible()
    expect(c.page.locator("#error")).to_contain_text("Signed out")
    check(c.page.evaluate("() => sessionStorage.length") == 0, "the revoked token is still in sessionStorage")
    check(not c.page.locator("#nav").is_visible(), "the page navigation is still shown after sign-out")
    c.finish()


def link_asks_before_replacing(browser, p, out):
    """A `#token=` link opened while signed in asks before it replaces the
    session: kept, the session stays; accepted, the link's token signs in."""
    c = Console(browser, p["base"])
    c.sign_in(p["token"])
    expect(c.page.locator("#who")).to_contain_text(p["name"])
    c.page.evaluate("t => { location.hash = '#token=' + t; }", p["link_token"])
    expect(c.page.locator("#link-question")).to_be_visible()
    check("token=" not in c.page.url, f"the token is still in the address bar: {c.page.url}")
    stored = c.page.evaluate("() => sessionStorage.getItem('nr-console.token')")
    check(stored == p["token"], "the link replaced the session before asking")
    c.page.locator("#link-keep").click()
    c.page.wait_for_function("() => document.body.dataset.rendered !== 'link'")
    expect(c.page.locator("#who")).to_contain_text(p["name"])
    stored = c.page.evaluate("() => sessionStorage.getItem('nr-console.token')")
    check(stored == p["token"], "a declined link replaced the session's token")

    c.page.evaluate("t => { location.hash = '#token=' + t; }", p["link_token"])
    c.page.locator("#link-accept").click()
    expect(c.page.locator("#who")).to_contain_text(p["link_name"])
    stored = c.page.evaluate("() => sessionStorage.getItem('nr-console.token')")
    check(stored == p["link_token"], "an accepted link did not sign in with its token")
    c.no_error()
    c.finish()


def subscribe_from_event_types(browser, p, out):
    """A namespace token makes a channel with a rate limit and ordered
    delivery, subscribes it to an event type picked from the event types
    list (whose description is shown), emits an event of that type through
    the API and follows it to SUCCESS on that channel in the event log.
    Screenshots the subscriptions page for docs/console.md."""
    c = Console(browser, p["base"], width=1200, height=900)
    c.sign_in(p["token"])

    c.go("#/channels")
    form = c.page.locator("#create-channel")
    form.get_by_label("Name").fill(p["channel_name"])
    form.get_by_label("URL").fill(p["url"])
    form.get_by_label("Rate limit").fill("5/s")
    form.get_by_label("Ordered", exact=False).check()
    form.get_by_role("button", name="Create channel").click()
    expect(c.page.locator("main h1")).to_have_text(p["channel_name"])
    channel_id = c.page.locator("main dl.facts code").first.inner_text()
    out["channel_id"] = channel_id
    expect(c.page.locator("#channel-rate-limit")).to_contain_text("5/s")
    expect(c.page.locator("#channel-ordered")).to_contain_text("yes")
    expect(c.page.locator("main")).to_contain_text("No subscription sends to this channel")

    # The channel's controls are editable: 5/s -> 2/m, stays ordered.
    edit = c.page.locator("#edit-channel")
    expect(edit.get_by_label("Rate limit")).to_have_value("5/s")
    check(edit.get_by_label("Ordered", exact=False).is_checked(), "the edit form does not show the channel as ordered")
    edit.get_by_label("Rate limit").fill("2/m")
    edit.get_by_role("button", name="Save changes").click()
    expect(c.page.locator("#notice")).to_contain_text("Channel saved.")
    expect(c.page.locator("#channel-rate-limit")).to_contain_text("2/m")

    c.go("#/event-types")
    row = c.page.locator(f"#event-types tr[data-type='{p['event_type']}']")
    expect(row).to_contain_text(p["description"])
    expect(row.locator("td.num").first).to_have_text(str(p["seen"]))
    check(row.locator("time").count() == 1, "the event type's last-seen time is not shown")
    row.get_by_role("link", name="Subscribe").click()
    c.page.wait_for_function("() => document.body.dataset.rendered === location.hash")
    expect(c.page.locator("main h1")).to_have_text("Subscriptions")
    create = c.page.locator("#create-rule")
    picked = create.get_by_label("Event type", exact=True).evaluate("s => s.options[s.selectedIndex].text")
    check(picked.startswith(p["event_type"] + " "), f"the event type offered is {picked!r}, not {p['event_type']!r}")
    expect(create.locator("#new-rule-type-about")).to_have_text(p["description"])
    create.get_by_label("Name", exact=True).fill(p["rule_name"])
    create.get_by_label(p["channel_name"]).check()
    create.get_by_role("button", name="Create subscription").click()
    expect(c.page.locator("main h1")).to_have_text(p["rule_name"])
    expect(c.page.locator("#notice")).to_contain_text("created")
    out["rule_id"] = c.page.locator("#rule-id").inner_text()
    expect(c.page.locator("#rule-channels").get_by_role("link", name=p["channel_name"])).to_be_visible()
    expect(c.page.locator("#rule-type-description")).to_have_text(p["description"])

    # The event, emitted through the API with this token (as a customer's
    # backend would), reaches the new channel.
    emitted = c.page.evaluate("""async ([ns, type]) => {
        const r = await fetch(`../v1/namespaces/${ns}/events`, { method: "POST",
          headers: { "Content-Type": "application/json",
                     Authorization: `Bearer ${sessionStorage.getItem("nr-console.token")}` },
          body: JSON.stringify({ type, payload: { invoice: "in_portal" } }) });
        return [r.status, await r.json()];
    }""", [p["namespace"], p["event_type"]])
    check(emitted[0] == 201, f"emitting through the API answered {emitted}")
    ids = emitted[1]["ids"]
    out["event_ids"] = ids
    c.go(f"#/events?channel={channel_id}")
    for _ in range(60):
        rows = c.page.locator("#events tbody tr")
        if rows.count() == 1 and "SUCCESS" in rows.first.inner_text():
            break
        c.page.wait_for_timeout(500)
        c.page.get_by_role("button", name="Apply").click()
        c.page.wait_for_function("() => document.body.dataset.rendered === location.hash")
    row = c.page.locator("#events tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("SUCCESS")
    event_id = row.get_attribute("data-event")
    check(event_id in ids, f"the channel's log shows {event_id}, not one of {ids}")
    out["delivered_event"] = event_id
    expect(c.page.locator("main .links").get_by_role("link", name=p["channel_name"])).to_be_visible()
    # The event's id is a link to its page, which links its subscription.
    row.get_by_role("link", name=event_id).click()
    c.page.wait_for_function("() => document.body.dataset.rendered === location.hash")
    expect(c.page.locator("#event-id")).to_have_text(event_id)
    expect(c.page.locator(f"article.delivery[data-channel='{channel_id}']")).to_have_attribute("data-state", "SUCCESS")
    c.page.locator("main dl.facts").get_by_role("link", name=p["rule_name"]).click()
    c.page.wait_for_function("() => document.body.dataset.rendered === location.hash")
    expect(c.page.locator("main h1")).to_have_text(p["rule_name"])

    # The channel's page lists the subscription that sends to it.
    c.go(f"#/channels/{channel_id}")
    expect(c.page.locator("#channel-rules").get_by_role("link", name=p["rule_name"])).to_be_visible()

    c.go("#/subscriptions")
    expect(c.page.locator(f"#rules tr[data-rule='{out['rule_id']}']")).to_contain_text(p["channel_name"])
    c.page.screenshot(path=p["screenshot"], full_page=True)
    c.page.set_viewport_size({"width": 375, "height": 800})
    c.go(f"#/subscriptions?channel={channel_id}")
    wide = c.page.evaluate("() => document.documentElement.scrollWidth")
    check(wide <= 375, f"the subscriptions page is {wide} px wide at a 375 px viewport")
    c.accessible("the subscriptions page at 375 px")
    c.page.screenshot(path=p["screenshot_phone"], full_page=True)
    c.no_error()
    c.finish()


def bad_filter(browser, p, out):
    """A filter PostgreSQL does not parse is refused with PostgreSQL's
    message, on create and on edit; nothing is saved (the Rust side checks
    `rule list --json`)."""
    c = Console(browser, p["base"])
    c.sign_in(p["token"])
    c.go("#/subscriptions")
    create = c.page.locator("#create-rule")
    create.get_by_label("Name", exact=True).fill("Big invoices")
    create.get_by_label(p["channel_name"]).check()
    create.get_by_label("Filter (optional)").fill(p["filter"])
    create.get_by_role("button", name="Create subscription").click()
    expect(c.page.locator("#error")).to_contain_text("Refused (HTTP 422)")
    out["create_error"] = c.page.locator("#error").inner_text()
    expect(c.page.locator("main h1")).to_have_text("Subscriptions")
    expect(create.get_by_label("Filter (optional)")).to_have_value(p["filter"])

    c.go(f"#/subscriptions/{p['rule_id']}")
    edit = c.page.locator("#edit-rule")
    edit.get_by_label("Filter").fill(p["filter"])
    edit.get_by_role("button", name="Save changes").click()
    expect(c.page.locator("#error")).to_contain_text("Refused (HTTP 422)")
    out["edit_error"] = c.page.locator("#error").inner_text()
    c.go("#/subscriptions")
    c.go(f"#/subscriptions/{p['rule_id']}")
    expect(c.page.locator("#rule-filter")).to_have_text("—")
    c.finish()


SCENARIOS = {f.__name__: f for f in (namespace_isolation, event_detail, event_log, create_and_edit, hostile_text, read_only, recover, revoked, link_asks_before_replacing, subscribe_from_event_types, bad_filter)}


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in SCENARIOS:
        print(f"usage: {sys.argv[0]} {{{'|'.join(SCENARIOS)}}} PARAMS.json RESULTS.json", file=sys.stderr)
        return 2
    name, params_path, results_path = sys.argv[1:]
    with open(params_path, encoding="utf-8") as f:
        params = json.load(f)
    chromium = os.environ.get("NR_CHROMIUM", "/usr/bin/chromium")
    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            SCENARIOS[name](browser, params, out)
        except Failure as e:
            print(f"console scenario {name}: {e}", file=sys.stderr)
            return 1
        except AssertionError as e:
            print(f"console scenario {name}: {e}", file=sys.stderr)
            return 1
        finally:
            browser.close()
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
