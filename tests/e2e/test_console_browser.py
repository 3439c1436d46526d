"""The site console in a real browser: Debian's chromium driven by Playwright (executable_path, no
downloaded browser) against a whole site built from the real parts (host/site.py: Mosquitto with
per-device passwords and the ACL, `nabd-gateway serve`, the virtual device running the firmware).

One site, one browser, and the steps in order in one test (each needs the state the previous one
left, so no test runner may split or reorder them; a failing step saves its page as
build/console/FAILED_<step>.png):
a clinician logs in; a reading the virtual device takes before any assignment lands in the inbox
and is attached to a patient (audited); the clinician assigns the device to the patient (a signed
command through the broker), the device measures a feverish patient and the reading appears on the
patient's page with the fever alert; the clinician is refused the admin pages and the other roles'
API, a forged admin form post and a post without CSRF token are refused and audited; wrong
passwords are rate-limited; an expired session goes back to the login page; a user changes her own
password (the current one checked, her other session ended); the administrator sees
the device, the quarantine, users, the audit log and the observatory charts, rotates the device's
key and revokes it. Every page is saved as a screenshot under build/console/ (a test artefact).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.web.console import _offset_label

pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("console-browser")]
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "build" / "console"
CHROMIUM = "/usr/bin/chromium"
PATIENT = "p-brw001"
USERS = {"amina": ("clinician", "amina-passw0rd!"), "root": ("admin", "root-passw0rd!"),
         "obs": ("observatory", "obs-passw0rd!"), "karim": ("clinician", "karim-passw0rd!"),
         "sara": ("clinician", "sara-passw0rd!")}


def _gw(site, *args, stdin: str = "") -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config", str(site.gw_config)], input=stdin,
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return p


def _audit(site, action: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(site.dir / "gateway" / "records.db") as c:
        return c.execute("SELECT actor, action, target, detail FROM audit_log WHERE action = ? ORDER BY id",
                         (action,)).fetchall()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is not installed: `make setup` installs it (apt-get install chromium)")
    from host.site import Site

    t0 = time.monotonic()
    s = Site(tmp_path_factory.mktemp("console") / "site")
    s.setup()
    s.start()
    for name, (role, pw) in USERS.items():
        _gw(s, "users", "add", name, "--role", role, stdin=pw + "\n")
    s.tokens = {name: json.loads(_gw(s, "users", "token", name, "--json").stdout)["token"]
                for name in ("amina", "obs")}
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    yield s
    s.stop()
    print(f"\nconsole browser tests: {time.monotonic() - t0:.1f} s (site set-up included)")


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def clinician(browser, site):
    """A tablet-sized page logged in as the clinician."""
    ctx = browser.new_context(viewport={"width": 820, "height": 1180}, locale="fr-FR", **HTTPS)
    page = ctx.new_page()
    _login(page, site, "amina")
    yield page
    ctx.close()


# The site's API speaks HTTPS with a certificate from its one-off local CA (nabd-gateway init
# --local-tls); Chromium takes no CA file, so the browser contexts accept that certificate.
HTTPS = {"ignore_https_errors": True}


def _console(site) -> str:
    return site.api + "/console"


def _login(page, site, name: str, password: str | None = None):
    page.goto(_console(site) + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password or USERS[name][1])
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _api(site, path: str, token: str) -> int:
    req = urllib.request.Request(site.api + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=site.tls()) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _clinician_logs_in_and_sees_the_patient_list(clinician, site):
    assert clinician.url.endswith("/console/patients")
    assert clinician.locator("html").get_attribute("lang") == "fr"
    assert clinician.locator("h1").inner_text() == "Patients"
    shot(clinician, "clinician-patients-empty")


def _unassigned_reading_lands_in_the_inbox_and_is_attached(clinician, site):
    first = site.measure(1, scenario="normal")
    assert first["ok"], first
    clinician.goto(_console(site) + "/inbox")
    rows = clinician.locator("tr[data-reading]")
    assert rows.count() == 1 and site.device_id in rows.first.inner_text()
    shot(clinician, "clinician-inbox")
    rows.first.locator("input[name=patient]").fill(PATIENT)
    with clinician.expect_navigation():
        rows.first.locator("button").click()
    assert "?done=attached" in clinician.url and clinician.locator("tr[data-reading]").count() == 0
    [row] = _audit(site, "readings.attach")
    assert row[0] == "user:amina" and row[2] == f"Patient/{PATIENT}" and f"device={site.device_id}" in row[3]


def _assign_device_then_the_devices_reading_appears_on_the_patient_page(clinician, site):
    clinician.goto(f"{_console(site)}/patients/{PATIENT}")
    before = clinician.locator("tr[data-reading]").count()
    assert before == 1                                           # the attached one
    clinician.select_option("form[action$='/assign'] select[name=device]", site.device_id)
    with clinician.expect_navigation():
        clinician.click("form[action$='/assign'] button")
    assert "?done=assigned" in clinician.url
    assert site.device_id in clinician.locator("form[action$='/unassign']").inner_text()
    # the signed command waits in the device's broker session; the device then measures a fever
    later = site.measure(1, scenario="fever", seed=3)
    assert later["ok"], later
    clinician.reload()
    rows = clinician.locator("tr[data-reading]")
    assert rows.count() == before + 1
    newest = rows.first
    assert f"#{later['seqs'][0]}" in newest.inner_text() and "has-alert" in newest.get_attribute("class")
    assert "Fièvre" in clinician.locator("h1").inner_text()
    # times on the site's clock (Africa/Casablanca by default), the offset in the table's header
    casa = ZoneInfo("Africa/Casablanca")
    assert f"({_offset_label(dt.datetime.now(casa))})" in clinician.locator("thead").first.inner_text()
    import sqlite3

    with sqlite3.connect(site.dir / "gateway" / "records.db") as c:
        at = c.execute("SELECT effective_at FROM readings WHERE seq = ?", (later["seqs"][0],)).fetchone()[0]
    assert dt.datetime.fromisoformat(at).astimezone(casa).strftime("%Y-%m-%d %H:%M") in newest.inner_text()
    clinician.goto(f"{_console(site)}/patients/{PATIENT}")            # without the "sent" notice
    clinician.wait_for_selector(".chart[data-drawn]")
    assert clinician.locator(".chart[data-drawn] canvas").count() == 3    # temperature, SpO2, pulse
    shot(clinician, "clinician-patient")                                 # docs/img/console-patient.png
    reads = [r for r in _audit(site, "records.read") if r[2] == f"Patient/{PATIENT}"]
    assert reads and all(r[0] == "user:amina" for r in reads)
    commands = _audit(site, "devices.command")
    assert commands and commands[-1][0] == "user:amina" and PATIENT in commands[-1][3]


def _patient_page_in_arabic_is_right_to_left(clinician, site):
    clinician.goto(f"{_console(site)}/lang/ar?next=/console/patients/{PATIENT}")
    assert clinician.locator("html").get_attribute("dir") == "rtl"
    assert clinician.locator("html").get_attribute("lang") == "ar"
    clinician.wait_for_selector(".chart[data-drawn]")
    shot(clinician, "clinician-patient-ar")
    clinician.goto(f"{_console(site)}/lang/en?next=/console/patients")
    assert clinician.locator("h1").inner_text() == "Patients" and "Sign out" in clinician.content()
    shot(clinician, "clinician-patients-en")
    clinician.goto(f"{_console(site)}/lang/fr?next=/console/patients")
    assert clinician.locator("html").get_attribute("lang") == "fr"


def _clinician_cannot_open_admin_pages_or_other_roles_api(clinician, site):
    for path in ("/admin/devices", "/admin/users", "/admin/quarantine", "/admin/audit", "/observatory"):
        resp = clinician.goto(_console(site) + path)
        assert resp.status == 403, path
    shot(clinician, "clinician-forbidden")
    denied = _audit(site, "auth.denied")
    assert {r[2] for r in denied} >= {"/console/admin/devices", "/console/observatory"}
    assert all(r[0] == "user:amina" for r in denied)
    # API: the clinician's token reads records, not the observatory or metrics; and the other way round
    tok, obs = site.tokens["amina"], site.tokens["obs"]
    assert _api(site, f"/fhir/Observation?patient={PATIENT}", tok) == 200
    assert _api(site, "/observatory/device-counts?from=2026-01-01&to=2026-01-02", tok) == 403
    assert _api(site, "/metrics", tok) == 403
    assert _api(site, "/observatory/device-counts?from=2026-01-01&to=2026-01-02", obs) == 200
    assert _api(site, f"/fhir/Observation?patient={PATIENT}", obs) == 403
    assert _api(site, f"/fhir/Observation?patient={PATIENT}", "nabd_not-a-token") == 401
    assert any(r[0].startswith("user:amina (token") and r[2] == f"Patient/{PATIENT}"
               for r in _audit(site, "records.read"))


def _forged_admin_post_and_missing_csrf_are_refused_and_audited(clinician, site):
    clinician.goto(_console(site) + "/patients")
    csrf = clinician.locator("input[name=csrf]").first.get_attribute("value")
    # a clinician forging the admin's add-user form, with their own valid CSRF token
    forged = clinician.evaluate("""async ([url, csrf]) => {
        const r = await fetch(url, {method: "POST", body: new URLSearchParams({csrf, username: "mallory",
                                    role: "admin", password: "mallory-passw0rd"})});
        return r.status; }""", [_console(site) + "/admin/users/add", csrf])
    assert forged == 403
    assert [r for r in _audit(site, "auth.denied") if r[2] == "/console/admin/users/add"]
    assert "mallory" not in _gw(site, "users", "list").stdout
    # the clinician's own form without the CSRF token
    missing = clinician.evaluate("""async (url) => {
        const r = await fetch(url, {method: "POST", body: new URLSearchParams({patient: "p-evil01",
                                    device: "nabd-x"})});
        return [r.status, await r.text()]; }""", _console(site) + "/assign")
    assert missing[0] == 403 and "jeton" in missing[1]
    [refused] = [r for r in _audit(site, "csrf.refused") if r[2] == "/console/assign"]
    assert refused[0] == "user:amina"
    clinician.set_content(missing[1])
    shot(clinician, "clinician-csrf-refused")


def _wrong_passwords_are_rate_limited(browser, site):
    ctx = browser.new_context(viewport={"width": 1024, "height": 768}, **HTTPS)
    page = ctx.new_page()
    statuses = []
    for i in range(6):
        page.goto(_console(site) + "/login")
        page.fill("input[name=username]", "karim")
        page.fill("input[name=password]", f"wrong-guess-{i}")
        with page.expect_navigation() as nav:
            page.click("button[type=submit]")
        statuses.append(nav.value.status)
    assert statuses == [401] * 5 + [429]
    assert "réessayez dans" in page.locator(".error").inner_text()
    shot(page, "login-rate-limited")
    _login(page, site, "karim")                           # the right password is refused too, for now
    assert page.url.endswith("/login") or "/login?" in page.url
    assert len(_audit(site, "auth.login-failed")) == 5 and len(_audit(site, "auth.login-throttled")) == 2
    ctx.close()


def _expired_session_goes_back_to_login(browser, site):
    import sqlite3

    ctx = browser.new_context(**HTTPS)
    page = _login(ctx.new_page(), site, "amina")
    assert page.url.endswith("/console/patients")
    with sqlite3.connect(site.dir / "gateway" / "records.db") as c:   # a session idle past its expiry
        c.execute("UPDATE sessions SET expires_at = '2000-01-01T00:00:00.000000+00:00'")
    page.goto(_console(site) + "/patients")
    assert "/console/login?next=/console/patients" in page.url
    shot(page, "login-after-expiry")
    ctx.close()


def _user_changes_her_password(browser, site):
    old, new = USERS["sara"][1], "sara-new-passw0rd!"
    other = _login(browser.new_context(**HTTPS).new_page(), site, "sara")       # e.g. left open on another PC
    ctx = browser.new_context(viewport={"width": 820, "height": 1180}, **HTTPS)
    page = _login(ctx.new_page(), site, "sara")
    page.click("a[href$='/account/password']")
    assert page.url.endswith("/console/account/password")

    def submit(current: str, new_pw: str, confirm: str) -> int:
        page.fill("input[name=current]", current)
        page.fill("input[name=new]", new_pw)
        page.fill("input[name=confirm]", confirm)
        with page.expect_navigation() as nav:
            page.click("form.stack button[type=submit]")
        return nav.value.status

    assert submit("not-her-password", new, new) == 403
    assert "Mot de passe actuel incorrect" in page.locator(".error").inner_text()
    assert submit(old, new, new + "x") == 400
    assert "diffèrent" in page.locator(".error").inner_text()
    assert submit(old, new, new) == 200 and page.url.endswith("?done=password_changed")
    shot(page, "account-password-changed")
    assert page.goto(_console(site) + "/patients").status == 200          # this session stays
    other.goto(_console(site) + "/patients")                              # the other one has ended
    assert "/console/login" in other.url
    _login(other, site, "sara", old)
    assert "/console/login" in other.url                                  # the old password no longer works
    _login(other, site, "sara", new)
    assert other.url.endswith("/console/patients")
    assert [r[0] for r in _audit(site, "users.password")] == ["user:sara"]
    assert [r[0] for r in _audit(site, "users.password-refused")] == ["user:sara"]
    other.context.close()
    ctx.close()


def _admin_pages(browser, site):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, **HTTPS)
    page = _login(ctx.new_page(), site, "root")
    assert page.url.endswith("/console/admin/devices")
    row = page.locator(f"tr[data-device='{site.device_id}']")
    text = row.inner_text()
    assert "0.1" in text and ("Hors ligne" in text or "En ligne" in text)   # firmware and state shown
    shot(page, "admin-devices")
    for name in ("quarantine", "users", "audit"):
        assert page.goto(f"{_console(site)}/admin/{name}").status == 200
        shot(page, f"admin-{name}")
    assert "auth.denied" in page.content() and "csrf.refused" in page.content()
    page.goto(_console(site) + "/observatory")
    page.wait_for_selector(".chart[data-drawn]")
    shot(page, "admin-observatory")
    # rotate the device key (old version valid 72 h) and revoke the device, from the console
    page.goto(_console(site) + "/admin/devices")
    row = page.locator(f"tr[data-device='{site.device_id}']")
    row.locator("summary").click()
    row.locator("input[name=key]").fill("ab" * 32)
    with page.expect_navigation():
        row.locator("form[action$='/rotate'] button").click()
    assert "?done=rotated" in page.url
    assert [r for r in _audit(site, "devices.rotate-key") if r[0] == "user:root"]
    with page.expect_navigation():
        page.locator(f"tr[data-device='{site.device_id}'] form[action$='/revoke'] button").click()
    assert "?done=revoked" in page.url
    listed = json.loads(_gw(site, "devices", "list", "--json").stdout)
    assert [d["status"] for d in listed if d["id"] == site.device_id] == ["revoked"]
    ctx.close()


def _observatory_user_sees_counts_only(browser, site):
    ctx = browser.new_context(**HTTPS)
    page = _login(ctx.new_page(), site, "obs")
    assert page.url.endswith("/console/observatory")
    assert page.goto(f"{_console(site)}/patients/{PATIENT}").status == 403
    assert page.goto(f"{_console(site)}/inbox").status == 403
    ctx.close()


STEPS = [
    (_clinician_logs_in_and_sees_the_patient_list, "clinician"),
    (_unassigned_reading_lands_in_the_inbox_and_is_attached, "clinician"),
    (_assign_device_then_the_devices_reading_appears_on_the_patient_page, "clinician"),
    (_patient_page_in_arabic_is_right_to_left, "clinician"),
    (_clinician_cannot_open_admin_pages_or_other_roles_api, "clinician"),
    (_forged_admin_post_and_missing_csrf_are_refused_and_audited, "clinician"),
    (_wrong_passwords_are_rate_limited, "browser"),
    (_expired_session_goes_back_to_login, "browser"),
    (_user_changes_her_password, "browser"),
    (_admin_pages, "browser"),
    (_observatory_user_sees_counts_only, "browser"),
]


@pytest.mark.timeout(900)   # ~1 min alone; a loaded 2-core CI machine runs it several times slower
def test_console_in_a_browser(site, browser, clinician):
    for step, first in STEPS:
        try:
            step(clinician if first == "clinician" else browser, site)
        except BaseException:
            pages = [p for c in reversed(browser.contexts) for p in c.pages]
            if first == "clinician":
                pages.insert(0, clinician)
            if pages:
                pages[0].screenshot(path=str(SHOTS / f"FAILED{step.__name__}.png"), full_page=True)
                print(f"{step.__name__} failed on {pages[0].url}:\n{pages[0].inner_text('body')[:1500]}")
            raise
