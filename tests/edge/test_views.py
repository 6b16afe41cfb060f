"""The HTML pages: the main page (upload, batches, job control, search), the reports page and the
schedules page.

The pages are static shells whose scripts talk to the JSON API; these tests read the markup
(forms, fields, labels, links, no inline script) and the static files. tests/edge/test_views_in_a_browser.py
drives the real scripts in Chromium as a person does.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup

from tests.conftest import browser_client, upload

PAGES = ("/", "/reports", "/schedules", "/sources")


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
    assert set(hrefs) == {"Documents", "Reports", "Schedules", "Sources"}
    assert hrefs["Reports"] == "/reports" and hrefs["Documents"] == "/" and hrefs["Schedules"] == "/schedules"
    assert hrefs["Sources"] == "/sources"
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

