"""The HTML pages: the main page (upload, batches, job control, search), the reports page and the
schedules page.

The pages are static shells whose scripts talk to the JSON API; these tests read the markup
(forms, fields, labels, links, no inline script) and the static files. One end-to-end test
drives the real scripts in headless Chromium through Playwright, against a real server thread
and a real worker; it is skipped when either the browser or the ``playwright`` package is missing.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup

from tests.conftest import CORPUS, browser_client, make_token, serve_wsgi, upload

PAGES = ("/", "/reports", "/schedules")


@pytest.fixture
def client(app):
    """Signed in through /signin, sending the page's CSRF token as the pages' script does."""
    return browser_client(app)


def soup_of(client, path: str) -> BeautifulSoup:
    response = client.get(path)
    assert response.status_code == 200, path
    assert response.mimetype == "text/html"
    return BeautifulSoup(response.get_data(as_text=True), "html.parser")


def labelled(page: BeautifulSoup, control) -> bool:
    """Whether a form control has a label: ``<label for=id>`` or an enclosing ``<label>``."""
    return bool(control.get("id") and page.find("label", attrs={"for": control["id"]})) or bool(
        control.find_parent("label"))


@pytest.mark.parametrize("path", PAGES)
def test_pages_load_scripts_from_files_only(client, path):
    page = soup_of(client, path)
    scripts = page.find_all("script")
    assert scripts, "the page has no script"
    for script in scripts:
        assert script.get("src"), f"inline <script> on {path}: {script}"
        assert not script.get_text(strip=True), f"<script src> with inline content on {path}"
        assert urlsplit(script["src"]).netloc == "", f"external script host on {path}: {script['src']}"
    # No inline event handlers or javascript: URLs either (a CSP without 'unsafe-inline' blocks them).
    for tag in page.find_all(True):
        assert not [a for a in tag.attrs if a.lower().startswith("on")], f"inline handler on {path}: {tag.name}"
        assert not str(tag.get("href", "")).lower().startswith("javascript:")
    for link in page.find_all("link", rel="stylesheet"):
        assert urlsplit(link["href"]).netloc == ""


@pytest.mark.parametrize("path", PAGES)
def test_static_files_of_each_page_are_served(client, path):
    page = soup_of(client, path)
    urls = [s["src"] for s in page.find_all("script")] + [l["href"] for l in page.find_all("link", rel="stylesheet")]
    assert any(u.endswith(".css") for u in urls)
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.get_data(), url
        expected = "javascript" if url.endswith(".js") else "css"
        assert expected in response.mimetype, (url, response.mimetype)


@pytest.mark.parametrize("path", PAGES)
def test_nav_links_both_pages_and_resolve(client, path):
    page = soup_of(client, path)
    nav = page.find("nav")
    assert nav is not None and nav.get("aria-label")
    hrefs = {a.get_text(strip=True): a["href"] for a in nav.find_all("a")}
    assert set(hrefs) == {"Documents", "Reports", "Schedules"}
    assert hrefs["Reports"] == "/reports" and hrefs["Documents"] == "/" and hrefs["Schedules"] == "/schedules"
    for href in hrefs.values():
        assert client.get(href).status_code == 200, href
    current = nav.find("a", attrs={"aria-current": "page"})
    assert current is not None and current["href"] == path


@pytest.mark.parametrize("path", PAGES)
def test_every_control_has_a_label_and_buttons_are_buttons(client, path):
    page = soup_of(client, path)
    controls = [c for c in page.find_all(["input", "select", "textarea"]) if c.get("type") != "hidden"]
    assert controls
    for control in controls:
        assert labelled(page, control), f"unlabelled control on {path}: {control}"
    for button in page.find_all("button"):
        assert button.get("type") in ("submit", "button"), button
    assert not page.find(attrs={"role": "button"}), "a fake button: use <button>"


def test_main_page_upload_form_has_the_new_fields(client):
    page = soup_of(client, "/")
    form = page.find("form", id="upload-form")
    assert form["action"] == "/api/documents" and form["enctype"] == "multipart/form-data"
    file_input = form.find("input", attrs={"name": "file"})
    assert file_input["type"] == "file" and file_input.has_attr("multiple")
    assert form.find("input", attrs={"name": "password"})["type"] == "password"
    reprocess = form.find("input", attrs={"name": "reprocess"})
    assert reprocess["type"] == "checkbox" and reprocess["value"] == "true"
    assert "already uploaded" in page.find("label", attrs={"for": reprocess["id"]}).get_text()
    callback = form.find("input", attrs={"name": "callback_url"})
    assert callback["type"] == "url"
    assert "Webhook URL" in page.find("label", attrs={"for": callback["id"]}).get_text()
    # Where the scripts put batch progress and the documents (with their Cancel/Retry buttons).
    assert page.find(id="batches") is not None and page.find(id="documents") is not None
    assert page.find(id="upload-error")["role"] == "alert"


def test_reports_page_offers_both_types_and_the_period(client):
    page = soup_of(client, "/reports")
    form = page.find("form", id="report-form")
    types = {i["value"] for i in form.find_all("input", attrs={"name": "type", "type": "radio"})}
    assert types == {"activity", "documents"}
    scopes = {i["value"] for i in form.find_all("input", attrs={"name": "scope", "type": "radio"})}
    assert scopes == {"period", "selected"}
    for name in ("since", "until"):
        field = form.find("input", attrs={"name": name})
        assert field is not None and field["type"] == "datetime-local", name
    assert form.find(id="report-document-list") is not None  # filled from GET /api/documents?limit=100
    assert form.find("button", attrs={"type": "submit"}) is not None
    assert page.find(id="report-error")["role"] == "alert"
    assert page.find(id="reports") is not None  # the newest reports, from GET /api/reports


def test_scripts_use_the_api_the_pages_need(client):
    """A cheap guard against a renamed endpoint or field: the scripts name what they call."""
    common = client.get("/static/common.js").get_data(as_text=True)
    app_js = client.get("/static/app.js").get_data(as_text=True)
    reports_js = client.get("/static/reports.js").get_data(as_text=True)
    assert "/api/jobs/" in common and "cancel" in common and "retry" in common
    for needle in ("batch_url", "duplicate", "reprocess", "callback_url", "/api/documents"):
        assert needle in app_js, needle
    for needle in ("/api/reports?limit=", "/api/documents?limit=100", "downloads", "toISOString"):
        assert needle in reports_js, needle
    for source in (common, app_js, reports_js):
        assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|\beval\(|document\.write", source)


def test_the_api_answers_what_the_pages_read(client, run_worker):
    """The fields the scripts rely on, from a real upload of two files and a real worker."""
    body = upload(client, "war-and-peace-ch1.txt", "pypdf-extract-text.md").get_json()
    assert body["batch_url"] and len(body["documents"]) == 2
    assert {"id", "filename", "job_id", "duplicate", "status_url", "document_url"} <= set(body["documents"][0])
    run_worker()
    batch = client.get(body["batch_url"]).get_json()
    assert batch["finished"] and batch["progress"] == 100 and batch["totals"] == {"finished": 2}
    again = upload(client, "war-and-peace-ch1.txt").get_json()
    assert again["documents"][0]["duplicate"] is True and again["documents"][0]["id"] == body["documents"][0]["id"]
    refused = client.post(f"/api/jobs/{body['documents'][0]['job_id']}/cancel")
    assert refused.status_code == 409 and refused.get_json()["error"]["message"]


# ---------- the real scripts in a real browser ----------

BROWSER = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
E2E_FILES = ("war-and-peace-ch1.txt", "pypdf-extract-text.md")


@pytest.fixture
def live_server(app):
    """The test's app served over HTTP by werkzeug in a thread; yields its base URL."""
    with serve_wsgi(app) as url:
        yield url


@pytest.mark.skipif(BROWSER is None, reason="no chromium, chromium-browser or google-chrome on PATH")
@pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="the Python 'playwright' package is not installed "
                                                "(it is not a project requirement; pip install playwright to run this)")
def test_browser_uploads_two_files_and_gets_a_report(app, live_server, start_worker):
    from playwright.sync_api import expect, sync_playwright

    start_worker()
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            # (Chromium logs every 4xx answer as a console error; the one 400 below is expected.)
            page.on("console", lambda msg: problems.append(f"console: {msg.text}")
                    if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)

            page.goto(f"{live_server}/")  # signed out: the sign-in page, then the run command's kind of link
            expect(page).to_have_url(re.compile(r"/signin"))
            page.goto(f"{live_server}/signin#token={make_token(app, 'browser', admin=False)}")
            expect(page).to_have_url(f"{live_server}/")
            expect(page.locator("#documents-message")).to_have_text("No documents yet. Upload one above.")
            page.set_input_files("#upload-file", [str(CORPUS / name) for name in E2E_FILES])
            page.get_by_role("button", name="Upload", exact=True).click()
            batch = page.locator("#batches .batch").first
            expect(batch).to_contain_text("Upload of 2 files")
            expect(batch.locator(".doc-status")).to_have_text("Done: 2 finished", timeout=120_000)
            assert batch.locator("progress").evaluate("p => p.value") == 100
            for name in E2E_FILES:
                row = page.locator("#documents .doc", has_text=name)
                expect(row.locator(".doc-status")).to_contain_text("Finished:", timeout=30_000)
                expect(row.get_by_role("button", name="Retry")).to_be_hidden()

            # The same file again: shown as already uploaded, pointing at the existing document.
            page.set_input_files("#upload-file", str(CORPUS / E2E_FILES[0]))
            page.get_by_role("button", name="Upload", exact=True).click()
            expect(page.locator("#upload-status")).to_contain_text("already uploaded")
            link = page.locator("#batches .batch").first.get_by_role("link", name="Show the existing document")
            expect(link).to_be_visible()
            target = link.get_attribute("href")
            assert page.locator(target).count() == 1

            page.get_by_role("navigation", name="Main").get_by_role("link", name="Reports").click()
            expect(page).to_have_url(f"{live_server}/reports")
            page.get_by_role("radio", name="Activity").check()
            page.get_by_role("button", name="Request report", exact=True).click()
            report = page.locator("#reports .report").first
            expect(report.locator(".doc-status")).to_have_text("Ready", timeout=120_000)
            open_link = report.get_by_role("link", name="Open the report (HTML, in a new tab)")
            assert open_link.get_attribute("target") == "_blank"
            hrefs = {fmt: report.get_by_role("link", name=f"Download {fmt.upper()}").get_attribute("href")
                     for fmt in ("csv", "json", "pdf")}
            hrefs["html"] = open_link.get_attribute("href")
            for fmt, href in hrefs.items():
                response = page.request.get(f"{live_server}{href}")
                assert response.status == 200 and response.body(), (fmt, response.status)

            # A second request with a bad period: the server's sentence, not a dump.
            page.fill("#report-since", "2026-01-02T00:00")
            page.fill("#report-until", "2026-01-01T00:00")
            page.get_by_role("button", name="Request report", exact=True).click()
            expect(page.locator("#report-error")).to_have_text("'since' must be before 'until'.")

            # The list survives a reload (it is the server's).
            page.reload()
            expect(page.locator("#reports .report")).to_have_count(1)
            expect(page.locator("#reports .report .doc-status")).to_have_text("Ready")
        finally:
            browser.close()
    assert not problems, problems
