"""The UI as a person uses it: Debian's Chromium, driven by Playwright, against the Procfile's web
process and a real RQ worker.

One web process, one worker and one browser serve the whole module (a fresh browser context,
i.e. fresh cookies, per test; each test signs in as its own owner, so the documents of one test
never show up in another's list). Chromium is ``/usr/bin/chromium``: the :func:`chromium` fixture
installs Debian's package when it is missing (as root, with apt-get), since Playwright's own
browser download cannot work on a machine without internet access.

What is checked is what a person sees: texts, progress bars, buttons, downloads — never how the
page gets its updates (polling or Server-Sent Events). Every page's console errors, uncaught
exceptions (which include Content-Security-Policy violations) and 5xx answers fail the test.

Screenshots of the key states go to ``tests/artifacts/browser/`` (ignored by git).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.conftest import (CORPUS, PASSWORDS, ROOT, TEST_SECRET_KEY, ServiceProcesses, kill_processes_of_test,
                            make_token, procfile_web, serve_wsgi, wait_for)
from tests.local_services import LocalEmbeddingServer, slow_worker_env

CHROMIUM = "/usr/bin/chromium"
# --headless: no display here. --no-sandbox: root has no user namespace sandbox. The rest keep
# Chromium from calling home (update checks, sync, QUIC probes): on a machine without internet
# those connections are refused and can stall or crash the start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
JOB_MS = 180_000  # a document job on a loaded 2-CPU machine (a generous bound, not a speed claim)
UI_MS = 30_000  # any other visible change

TEXT_PDF = "federal-register-2020-17221.pdf"  # 15 pages of text
SCANNED_PDF = "huck-finn-p22-scan.pdf"  # image only, no text layer: read by OCR
ENCRYPTED_PDF = "libreoffice-writer-password.pdf"  # needs its password
NARROW = {"width": 375, "height": 740}

# The whole module's worker, web process and browser start once; apt-get may run first.
pytestmark = [pytest.mark.timeout(900),
              pytest.mark.own_database("the pages are the subject; the module runs once, on SQLite")]


# ---------- Chromium, installed when missing ----------

def _apt_install_chromium() -> None:
    """``apt-get install chromium`` (``apt-get update`` first when the package is unknown).

    Skips the calling test when it cannot work here (not root, no apt-get); fails it with apt's
    output when the install itself fails."""
    apt_get = shutil.which("apt-get")
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and installing it needs root (apt-get install chromium)")
    if apt_get is None:
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get to install Debian's chromium package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def run(*args: str) -> subprocess.CompletedProcess:
        # Other sessions may hold the dpkg lock: wait for it instead of failing at once.
        return subprocess.run([apt_get, "-o", "DPkg::Lock::Timeout=600", *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=900)

    install = ("install", "-y", "-q", "--no-install-recommends", "chromium")
    result = run(*install)
    if result.returncode != 0:
        update = run("update", "-q")
        result = run(*install) if update.returncode == 0 else update
    if result.returncode != 0 or not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"could not install Debian's chromium with apt-get (exit {result.returncode}):\n"
                    f"{(result.stdout + result.stderr)[-3000:]}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium, installed first when missing (see :func:`_apt_install_chromium`)."""
    if not os.access(CHROMIUM, os.X_OK):
        _apt_install_chromium()
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    expect.set_options(timeout=UI_MS)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # the screenshots are this run's
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# ---------- the service: one web process, one worker ----------

class Docket:
    """The module's running service: ``base`` URL, an ``app`` on the same database (for tokens),
    and its worker, which a test can stop (jobs then stay queued) and start again."""

    def __init__(self, base: str, app, workers: ServiceProcesses, redis) -> None:
        self.base, self.app, self.workers, self.redis = base, app, workers, redis
        self.worker = None

    def start_worker(self, **env: str) -> None:
        """Start the Procfile's worker (a pool; ``env`` added to its environment) unless it runs;
        return once RQ lists a worker of it (so that stopping it later finds its signal handlers
        in place)."""
        from rq import Worker

        if self.worker is None or self.worker.poll() is not None:
            self.worker = self.workers(**env)
            wait_for(lambda: Worker.count(connection=self.redis) > 0, 120, "the worker to register")

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            problems = self.workers.stop_all()
            assert not any(problems.values()), problems
        self.worker = None

    def token(self, owner: str, admin: bool = False) -> str:
        return make_token(self.app, owner, admin=admin)


@pytest.fixture(scope="module")
def docket(redis_server, tmp_path_factory) -> Iterator[Docket]:
    from redis import Redis

    from webapp import create_app
    from webapp.core.db import create_tables

    tmp = tmp_path_factory.mktemp("browser")
    config = {
        "TESTING": True,
        "DATABASE_URL": f"sqlite:///{tmp / 'docket.sqlite3'}",
        "REDIS_URL": redis_server.url,
        "STORAGE_PATH": str(tmp / "uploads"),
        "OPENAI_API_KEY": None,
        "OPENAI_BASE_URL": None,
        "SECRET_KEY": TEST_SECRET_KEY,
        "SESSION_COOKIE_SECURE": False,  # plain http on 127.0.0.1
        "FETCH_ALLOW_PRIVATE_NETWORKS": True,  # the fetch test's web site listens on 127.0.0.1
    }
    app = create_app(config)
    with app.app_context():
        create_tables()
    token = uuid.uuid4().hex  # the module's worker processes: proven gone at the module's end
    workers = ServiceProcesses(config, tmp, "worker", ["rq", "worker"], token=token)
    try:
        with procfile_web(config, tmp / "web.log") as base:
            yield Docket(base, app, workers, Redis.from_url(redis_server.url))
    finally:
        problems = workers.stop_all()
        Redis.from_url(redis_server.url).flushall()
        leftovers = kill_processes_of_test(token)
    assert not any(problems.values()), problems
    assert not leftovers, f"the module's worker processes outlived it: {leftovers}"


@pytest.fixture
def worker(docket: Docket) -> Docket:
    """The module's worker, running."""
    docket.start_worker()
    return docket


# ---------- pages ----------

# Every Content-Security-Policy violation of a page, as a console error (Playwright's init
# scripts are not subject to the page's policy).
REPORT_CSP_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline code"}`));"""


class Watched:
    """What went wrong on a page, besides what the test looks at: console errors (CSP violations
    are reported there), uncaught exceptions and 5xx answers."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def watch(self, page: Page) -> Page:
        def console(message) -> None:
            # Chromium logs each 4xx/5xx answer as a console error too; the 4xx ones the tests
            # provoke are expected, and a 5xx is caught by the response handler below.
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                self.problems.append(f"console error on {page.url}: {message.text}")

        page.on("console", console)
        page.add_init_script(REPORT_CSP_VIOLATIONS)
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught exception on {page.url}: {exc}"))
        page.on("response", lambda r: self.problems.append(f"HTTP {r.status} for {r.request.method} {r.url}")
                if r.status >= 500 else None)
        return page


@pytest.fixture
def watched() -> Iterator[Watched]:
    watched = Watched()
    yield watched
    assert not watched.problems, "\n".join(watched.problems)


@pytest.fixture
def new_context(request, browser: Browser, docket: Docket) -> Iterator[Callable[..., BrowserContext]]:
    """Open browser contexts (fresh cookies) with Playwright's ``new_context`` options; each is
    closed after the test, and when the test failed each of its pages is saved first as
    ``tests/artifacts/browser/FAILED-<test>-<n>.png``."""
    contexts: list[BrowserContext] = []
    failed_before = request.session.testsfailed

    def new(**options) -> BrowserContext:
        context = browser.new_context(base_url=docket.base, accept_downloads=True, **options)
        context.set_default_timeout(UI_MS)
        contexts.append(context)
        return context

    yield new
    failed = request.session.testsfailed > failed_before  # the call's report is in by teardown
    pages = [page for context in contexts for page in context.pages]
    for n, page in enumerate(pages if failed else []):
        try:
            shot(page, f"FAILED-{request.node.name}-{n}")
        except Exception:  # a page that crashed or is closing: nothing to save
            pass
    for context in contexts:
        context.close()


@pytest.fixture
def context(new_context) -> BrowserContext:
    return new_context()


@pytest.fixture
def page(context: BrowserContext, watched: Watched) -> Page:
    return watched.watch(context.new_page())


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as ``tests/artifacts/browser/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Page, token: str) -> None:
    """Sign in through the sign-in page as a person does: type the token, press Enter."""
    page.goto("/signin")
    page.get_by_label("Token").fill(token)
    page.get_by_label("Token").press("Enter")
    expect(page).to_have_url(re.compile(r"/$"))
    page.wait_for_load_state()  # its stylesheet too (the URL changes before the page has loaded)


def upload(page: Page, *names: str, password: str | None = None) -> None:
    """Choose corpus files in the upload form (and the password), press Upload."""
    page.get_by_label("Files", exact=True).set_input_files([str(CORPUS / name) for name in names])
    if password is not None:
        page.get_by_label("Password (only for encrypted PDFs)").fill(password)
    page.get_by_role("button", name="Upload", exact=True).click()


def doc_row(page: Page, name: str):
    """The newest row of the documents list for file ``name``."""
    return page.locator("#documents .doc", has=page.locator(".doc-name", has_text=re.compile(f"^{re.escape(name)}$"))).first


def scroll_width(page: Page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def text_lines(locator) -> int:
    """On how many lines the element's text is laid out."""
    return locator.evaluate("""(e) => {
      const range = document.createRange();
      range.selectNodeContents(e);
      return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
    }""")


# ---------- sign in, sign out ----------

def test_sign_in_with_a_token_and_sign_out(page: Page, docket: Docket):
    token = docket.token("signin-person")
    page.goto("/")  # signed out: the sign-in page, which comes back here afterwards
    expect(page).to_have_url(re.compile(r"/signin\?next=(/|%2F)$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    page.get_by_label("Token").fill("dkt_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("This token is not valid: it is unknown or was revoked.")
    expect(page.get_by_label("Token")).to_have_attribute("aria-invalid", "true")
    shot(page, "signin-refused")

    page.get_by_label("Token").fill(token)
    page.get_by_label("Token").press("Enter")
    expect(page).to_have_url(f"{docket.base}/")
    expect(page.locator(".signed-in-as")).to_have_text("signin-person")
    expect(page.get_by_role("navigation", name="Operator")).to_have_count(0)  # not an admin
    expect(page.locator("#documents-message")).to_have_text("No documents yet. Upload one above.")
    shot(page, "signed-in-empty")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
    expect(page.get_by_role("status").filter(has_text="Signed out.")).to_be_visible()
    page.goto("/reports")
    expect(page).to_have_url(re.compile(r"/signin\?next=(/|%2F)reports$"))

    # The run command's kind of link: the token in the fragment, never sent to the server. A
    # refused one is said once (no loop of submits), and leaves the address bar.
    page.goto("/signin#token=dkt_revoked-or-mistyped")
    expect(page.get_by_role("alert")).to_have_text("This token is not valid: it is unknown or was revoked.")
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.goto(f"/signin#token={token}")
    expect(page).to_have_url(f"{docket.base}/")  # signed in, the fragment gone from the address bar
    expect(page.locator(".signed-in-as")).to_have_text("signin-person")


# ---------- cancel and retry ----------

def test_cancel_a_queued_job_and_retry_it(page: Page, docket: Docket):
    docket.stop_worker()  # no worker: the job waits in its queue
    sign_in(page, docket.token("canceller"))
    name = "latex-two-column-lorem.pdf"
    upload(page, name)
    row = doc_row(page, name)
    expect(row.locator(".doc-status")).to_have_text("Queued — waiting for a worker")
    expect(page.locator("#upload-status")).to_have_text("Uploaded 1 file; processing in the background.")
    cancel = row.get_by_role("button", name=f"Cancel processing of {name}")
    retry = row.get_by_role("button", name=f"Retry processing of {name}")
    cancel.press("Enter")  # from the keyboard: the focus must stay on the job's buttons
    expect(row.locator(".doc-status")).to_have_text(re.compile(r"^Canceled"))
    expect(cancel).to_be_hidden()
    expect(retry).to_be_focused()
    shot(page, "job-canceled")

    retry.press("Enter")
    expect(row.locator(".doc-status")).to_have_text(re.compile(r"^Queued( again)? — waiting for a worker$"))
    expect(cancel).to_be_focused()
    docket.start_worker()
    expect(row.locator(".doc-status")).to_have_text(re.compile(r"^Finished: \d+ chunks? from 3 pages"),
                                                    timeout=JOB_MS)
    expect(retry).to_be_hidden()
    shot(page, "job-retried-finished")

    # Still canceled after a reload? No: the server's state is the finished one.
    page.reload()
    expect(doc_row(page, name).locator(".doc-status")).to_have_text(re.compile(r"^Finished: "))


def test_stop_a_running_job_and_retry_it(page: Page, docket: Docket):
    """A long document on a worker whose embeddings service is slow: its bar moves, Cancel stops
    it while it runs, Retry runs it again."""
    name = "geotopo-117p-de.pdf"  # 117 pages: many chunks, each embedding answered after 0.2 s
    service = LocalEmbeddingServer()
    with serve_wsgi(service.wsgi_app) as url:
        service.url = f"{url}/v1"
        docket.stop_worker()
        docket.start_worker(**slow_worker_env(service, delay=0.2))
        try:
            sign_in(page, docket.token("stopper"))
            upload(page, name)
            row = doc_row(page, name)
            status = row.locator(".doc-status")
            bar = row.get_by_role("progressbar", name=f"Progress for {name}")
            cancel = row.get_by_role("button", name=f"Cancel processing of {name}")
            retry = row.get_by_role("button", name=f"Retry processing of {name}")
            expect(status).to_have_text(re.compile(r"^Embedding… \d+%$"), timeout=JOB_MS)
            page.wait_for_function("([bar, first]) => bar.value > first", arg=[bar.element_handle(), bar.evaluate(
                "p => p.value")], timeout=JOB_MS)  # the bar moves by itself
            expect(bar).to_be_visible()
            shot(page, "job-running")

            cancel.press("Enter")
            expect(status).to_have_text(re.compile(r"^Stopped"))
            expect(bar).to_be_hidden()
            expect(retry).to_be_focused()
            shot(page, "job-stopped")
            retry.press("Enter")
            expect(status).to_have_text(re.compile(r"^Embedding… \d+% \(attempt 2\)$"), timeout=JOB_MS)  # again
            expect(cancel).to_be_focused()
            cancel.press("Enter")  # and stopped again: the worker is idle when it is stopped
            expect(status).to_have_text(re.compile(r"^Stopped"))
        finally:
            docket.stop_worker()


# ---------- upload real documents, watch the progress, read the outcomes ----------

# Records every value the upload panels' progress bars take (the attribute follows .value).
RECORD_PROGRESS = """() => {
  window.__docketPage = "not reloaded";
  window.__batchProgress = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.target.matches && r.target.matches("#batches progress")) window.__batchProgress.push(r.target.value);
    }
  }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ["value"] });
}"""


@pytest.mark.parametrize("updates", ["as the browser gets them", "without EventSource"])
def test_upload_text_scanned_and_encrypted_pdfs(page: Page, worker: Docket, updates: str):
    """The same for a person whatever the page's way of following jobs: Server-Sent Events, or
    polling in a browser without ``EventSource``."""
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
    if updates == "without EventSource":
        page.add_init_script("delete window.EventSource;")
    sign_in(page, worker.token("uploader" if updates.startswith("as") else "uploader-polling"))
    page.evaluate(RECORD_PROGRESS)
    upload(page, TEXT_PDF, SCANNED_PDF, ENCRYPTED_PDF)

    batch = page.locator("#batches .batch").first
    expect(batch).to_contain_text("Upload of 3 files")
    bar = batch.get_by_role("progressbar", name="Overall progress of the upload of 3 files")
    expect(bar).to_be_visible()
    suffix = "" if updates.startswith("as") else "-polling"
    shot(page, f"upload-in-progress{suffix}")
    expect(batch.locator(".doc-status")).to_have_text("Done: 2 finished · 1 failed", timeout=JOB_MS)
    expect(bar).to_have_js_property("value", 100)
    expect(bar).to_be_visible()
    # The page followed the jobs by itself: never reloaded, the bar only went forward.
    assert page.evaluate("window.__docketPage") == "not reloaded"
    seen = page.evaluate("window.__batchProgress")  # empty if the bar was drawn anew each time
    assert seen == sorted(seen) and (not seen or seen[-1] == 100), seen

    text_row = doc_row(page, TEXT_PDF)
    expect(text_row.locator(".doc-status")).to_have_text(
        re.compile(r"^Finished: [\d,]+ chunks from 15 pages \([\d,]+ characters\)$"))
    scan_row = doc_row(page, SCANNED_PDF)
    # A scan is read by OCR (OCR=auto, the default): its row says so, and no "needs OCR" warning is left.
    expect(scan_row.locator(".doc-status")).to_have_text(
        re.compile(r"^Finished: [\d,]+ chunks? from 1 page \([\d,]+ characters\), all read by OCR$"))
    expect(scan_row).not_to_contain_text("needs OCR")
    locked_row = doc_row(page, ENCRYPTED_PDF)
    expect(locked_row.locator(".doc-status")).to_have_text(
        "Failed: password required: this PDF is encrypted; upload it again with its password")
    expect(locked_row.get_by_role("button", name=f"Retry processing of {ENCRYPTED_PDF}")).to_be_visible()
    for row in (text_row, scan_row, locked_row):
        expect(row.get_by_role("progressbar")).to_be_hidden()  # the sentence replaces the bar
    shot(page, f"upload-outcomes{suffix}")

    # Again with its password: processed (not refused as already uploaded), and it finishes.
    upload(page, ENCRYPTED_PDF, password=PASSWORDS[ENCRYPTED_PDF])
    expect(page.locator("#upload-status")).to_have_text("Uploaded 1 file; processing in the background.")
    expect(page.get_by_label("Password (only for encrypted PDFs)")).to_have_value("")  # not kept in the form
    expect(page.locator("#documents .doc", has_text=ENCRYPTED_PDF)).to_have_count(2)
    expect(doc_row(page, ENCRYPTED_PDF).locator(".doc-status")).to_have_text(re.compile(r"^Finished: \d+ chunks? "),
                                                                             timeout=JOB_MS)
    assert page.evaluate("window.__docketPage") == "not reloaded"
    shot(page, f"upload-encrypted-with-password{suffix}")
    if suffix:
        assert not streams, streams  # the fallback did the work


def test_fetch_a_web_page_by_url_from_the_upload_form(page: Page, worker: Docket):
    from werkzeug.wrappers import Response

    from tests.conftest import serve_wsgi

    article = (b"<html><body><nav>Home | Products | Careers</nav><main><h1>Field notes</h1><p>"
               + b"The heron returned to the northern pond at dawn and fished for an hour. " * 8
               + b"</p></main><footer>Copyright ACME</footer></body></html>")
    site = Response(article, content_type="text/html")
    with serve_wsgi(site) as base:
        sign_in(page, worker.token("fetcher"))
        page.get_by_label("Or fetch from the web (one URL per line)").fill(f"{base}/notes/field-notes.html")
        page.get_by_role("button", name="Upload").click()
        expect(page.locator("#upload-status")).to_have_text("Fetching 1 URL; processing in the background.")
        row = doc_row(page, "field-notes.html")
        expect(row.locator(".doc-status")).to_have_text(re.compile(r"^Finished: 1 chunk "), timeout=JOB_MS)
    # Refused at once, with the reason, when the address is one Docket does not fetch.
    page.get_by_label("Or fetch from the web (one URL per line)").fill("http://169.254.169.254/latest/meta-data/")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-error")).to_contain_text("not a public address")
    shot(page, "fetch-by-url")


# ---------- search ----------

def test_search_shows_the_passage(page: Page, worker: Docket):
    sign_in(page, worker.token("searcher"))
    name = "war-and-peace-ch1.txt"
    upload(page, name)
    expect(doc_row(page, name).locator(".doc-status")).to_have_text(re.compile(r"^Finished: "), timeout=JOB_MS)

    search = page.get_by_label("Search documents")
    search.fill("Anna Pavlovna Scherer")
    search.press("Enter")
    expect(page.locator("#search-summary")).to_have_text(re.compile(r"^\d+ results? for “Anna Pavlovna Scherer”$"))
    first = page.locator("#search-results .result").first
    expect(first.locator(".result-name")).to_have_text(name)
    more = first.get_by_role("button", name="Show more")
    if more.count():  # a long passage shows a snippet first
        more.click()
        expect(first.get_by_role("button", name="Show less")).to_have_attribute("aria-expanded", "true")
    expect(first.locator(".result-text")).to_contain_text("Anna Pavlovna")
    shot(page, "search-results")

    search.fill("")
    search.press("Enter")
    expect(page.locator("#search-error")).not_to_be_empty()  # the server's sentence for an empty query
    expect(page.locator("#search-results .result")).to_have_count(0)


# ---------- reports ----------

E2E_FILES = ("war-and-peace-ch1.txt", "pypdf-extract-text.md")


def test_upload_two_files_request_and_download_a_report(page: Page, worker: Docket):
    sign_in(page, worker.token("reporter"))
    upload(page, *E2E_FILES)
    batch = page.locator("#batches .batch").first
    expect(batch).to_contain_text("Upload of 2 files")
    expect(batch.locator(".doc-status")).to_have_text("Done: 2 finished", timeout=JOB_MS)
    for name in E2E_FILES:
        expect(doc_row(page, name).locator(".doc-status")).to_contain_text("Finished:")

    # The same file again: shown as already uploaded, with a link to the existing document.
    upload(page, E2E_FILES[0])
    expect(page.locator("#upload-status")).to_contain_text("already uploaded")
    link = page.locator("#batches .batch").first.get_by_role(
        "link", name=f"Show the existing document for {E2E_FILES[0]}")
    link.click()
    expect(doc_row(page, E2E_FILES[0])).to_be_focused()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Reports").click()
    expect(page).to_have_url(f"{worker.base}/reports")
    page.get_by_role("radio", name="Documents", exact=True).check()
    page.get_by_role("button", name="Request report", exact=True).click()
    report = page.locator("#reports .report").first
    expect(report.locator(".doc-status")).to_have_text("Ready", timeout=JOB_MS)
    shot(page, "report-ready")

    with page.expect_download() as download_info:
        report.get_by_role("link", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".csv"), download.suggested_filename
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8-sig"))))
    assert {name for name in E2E_FILES} <= {value for row in rows for value in row.values()}, rows[:3]
    with page.expect_download() as download_info:
        report.get_by_role("link", name="Download PDF").click()
    assert Path(download_info.value.path()).read_bytes().startswith(b"%PDF-")
    open_link = report.get_by_role("link", name="Open the report (HTML, in a new tab)")
    assert open_link.get_attribute("target") == "_blank"
    with page.context.expect_page() as tab_info:
        open_link.click()
    tab = tab_info.value
    expect(tab.locator("body")).to_contain_text(E2E_FILES[1])
    tab.close()

    # A bad period: the server's sentence, not a dump.
    page.get_by_role("radio", name="Activity", exact=True).check()
    page.get_by_label("From").fill("2026-01-02T00:00")
    page.get_by_label("Until").fill("2026-01-01T00:00")
    page.get_by_role("button", name="Request report", exact=True).click()
    expect(page.locator("#report-error")).to_have_text("'since' must be before 'until'.")

    page.reload()  # the list is the server's
    expect(page.locator("#reports .report")).to_have_count(1)
    expect(page.locator("#reports .report .doc-status")).to_have_text("Ready")


def test_a_delayed_upload_waits_scheduled_then_runs_and_its_batch_report_follows(page: Page, worker: Docket,
                                                                                  tmp_path: Path):
    scheduler = ServiceProcesses(worker.workers.config, tmp_path, "scheduler", ["schedule", "run"],
                                 {"SCHEDULER_INTERVAL": "1"})
    scheduler()
    try:
        sign_in(page, worker.token("planner"))
        page.get_by_label("Files", exact=True).set_input_files([str(CORPUS / name) for name in E2E_FILES])
        page.get_by_label("Start after (seconds, optional)").fill("4")
        page.get_by_label("Make a documents report when every file is done").check()
        page.get_by_role("button", name="Upload", exact=True).click()
        expect(page.locator("#upload-status")).to_contain_text("scheduled to start later", timeout=UI_MS)
        expect(page.locator("#upload-status")).to_contain_text("A documents report follows")
        for name in E2E_FILES:
            expect(doc_row(page, name).locator(".doc-status")).to_contain_text("Scheduled for", timeout=UI_MS)
        shot(page, "delayed-upload-scheduled")
        for name in E2E_FILES:
            expect(doc_row(page, name).locator(".doc-status")).to_contain_text("Finished:", timeout=JOB_MS)

        page.get_by_role("navigation", name="Main").get_by_role("link", name="Reports").click()
        report = page.locator("#reports .report").first
        expect(report.locator(".doc-status")).to_have_text("Ready", timeout=JOB_MS)
        expect(page.locator("#reports .report")).to_have_count(1)
    finally:
        problems = scheduler.stop_all()
    assert not any(problems.values()), problems


# ---------- the operator's dashboard ----------

def test_dashboard_opens_for_an_admin_and_refuses_others(new_context, page: Page, worker: Docket,
                                                         watched: Watched):
    sign_in(page, worker.token("operator", admin=True))
    expect(page.locator(".signed-in-as")).to_have_text("operator (admin)")
    upload(page, "minimal-document.pdf")  # a job, so that RQ knows the queue
    expect(doc_row(page, "minimal-document.pdf").locator(".doc-status")).to_have_text(re.compile(r"^Finished: "),
                                                                                    timeout=JOB_MS)
    page.get_by_role("navigation", name="Operator").get_by_role("link", name="Dashboard").click()
    expect(page).to_have_url(re.compile(r"/rq/?$"))
    # Its scripts ran (jQuery, underscore templates under the dashboard's own CSP): they fetched
    # the queues and the workers and filled the tables.
    expect(page.locator("table#queues tbody").get_by_role("cell", name="default", exact=True)).to_be_visible()
    shot(page, "dashboard-admin")
    page.get_by_role("link", name="Workers", exact=True).click()
    expect(page.locator("table#workers tbody tr[data-role=worker]").first).to_be_visible()
    shot(page, "dashboard-workers")

    page.goto("/queues")
    expect(page.locator("#queues")).to_contain_text("default")
    shot(page, "queues-admin")

    person = watched.watch(new_context().new_page())
    sign_in(person, worker.token("not-an-operator"))
    expect(person.get_by_role("navigation", name="Operator")).to_have_count(0)
    for path in ("/rq", "/queues"):  # a page with the sentence, not a JSON dump
        response = person.goto(path)
        assert response is not None and response.status == 403, path
        expect(person.get_by_role("heading", name="Not allowed")).to_be_visible()
        expect(person.get_by_role("alert")).to_have_text("This needs an admin token.")
    shot(person, "dashboard-refused")
    person.get_by_role("link", name="Back to your documents").click()
    expect(person).to_have_url(f"{worker.base}/")


def test_dashboard_empty_cancels_the_queued_jobs_and_docket_agrees(page: Page, docket: Docket):
    """The dashboard's "Empty queue" goes through Docket's cancel: the dashboard says what it did,
    and Docket's page, the API and the dashboard's job page all say canceled."""
    docket.stop_worker()  # no worker: the job waits in its queue
    sign_in(page, docket.token("queue-emptier", admin=True))
    name = "latex-two-column-lorem.pdf"
    upload(page, name)
    expect(doc_row(page, name).locator(".doc-status")).to_have_text("Queued — waiting for a worker")

    page.goto("/rq/0/view/jobs/default/queued/8/asc/1")
    job_row = page.locator("table#jobs tbody tr[data-role=job]")
    expect(job_row).to_have_count(1)
    job_id = job_row.get_attribute("data-job-id")
    page.locator("#empty-btn").click()
    page.locator("#confirmation-modal-yes").click()
    expect(page.get_by_role("status")).to_have_text("1 waiting job canceled (not to run).")
    expect(page.locator("table#jobs tbody")).to_have_text("No jobs.")
    shot(page, "dashboard-emptied")

    job = page.request.get(f"/api/jobs/{job_id}").json()  # the session's own API answer
    assert (job["status"], job["rq_status"]) == ("canceled", "canceled"), job
    page.goto(f"/rq/0/view/job/{job_id}")
    expect(page.locator("#job-data")).to_contain_text("canceled")
    page.goto("/")
    expect(doc_row(page, name).locator(".doc-status")).to_have_text(re.compile(r"^Canceled"))


# ---------- a phone-sized screen ----------

def test_usable_at_375_px(new_context, worker: Docket, watched: Watched):
    context = new_context(viewport=NARROW, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = watched.watch(context.new_page())
    page.goto("/signin")
    assert scroll_width(page) <= NARROW["width"]
    shot(page, "narrow-signin")
    sign_in(page, worker.token("phone-person-with-a-rather-long-owner-name"))
    assert scroll_width(page) <= NARROW["width"]
    # A long label stays beside its checkbox; "Sign out" stays on one line.
    box, label = (page.locator(s).bounding_box() for s in ("#upload-reprocess", "label[for=upload-reprocess]"))
    assert label["x"] > box["x"] + box["width"] and label["y"] < box["y"] + box["height"], (box, label)
    assert text_lines(page.get_by_role("button", name="Sign out")) == 1

    name = "unreadable-metadata-broken-xref.pdf"  # a long name, and a failure sentence to wrap
    upload(page, name, "war-and-peace-ch1.txt")
    expect(page.locator("#batches .batch .doc-status").first).to_have_text(re.compile(r"^Done: "), timeout=JOB_MS)
    expect(doc_row(page, name).locator(".doc-status")).to_have_text(re.compile(r"^Failed: "))
    search = page.get_by_label("Search documents")
    search.fill("Anna Pavlovna")
    page.get_by_role("button", name="Search", exact=True).tap()
    expect(page.locator("#search-results .result").first).to_be_visible()
    for control in (page.get_by_label("Files", exact=True), page.get_by_role("button", name="Upload", exact=True),
                    search, page.get_by_role("button", name="Search", exact=True),
                    doc_row(page, name).get_by_role("button", name=f"Retry processing of {name}")):
        box = control.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= NARROW["width"], (control, box)
    assert scroll_width(page) <= NARROW["width"]
    shot(page, "narrow-documents")

    page.goto("/reports")
    expect(page.locator("#reports-message")).to_have_text("No reports yet.")
    assert scroll_width(page) <= NARROW["width"]
    shot(page, "narrow-reports")

    page.goto("/schedules")  # add one: its row, with its buttons, must fit too
    page.get_by_role("button", name="Add schedule").tap()
    expect(page.locator("#schedules > li").first).to_contain_text("activity_report")
    assert scroll_width(page) <= NARROW["width"]
    shot(page, "narrow-schedules")

    page.goto("/sources")  # add one: its row, with its buttons, must fit too
    page.get_by_label("Kind").select_option("web")
    page.get_by_label("URL, or URLs one a line").fill("http://127.0.0.1:9/a-rather-long-path/of-a-handbook/page.html")
    page.get_by_role("button", name="Add source").tap()
    expect(page.locator("#sources > li, #sources tr").first).to_contain_text("page.html")
    assert scroll_width(page) <= NARROW["width"]
    shot(page, "narrow-sources")


# ---------- the keyboard ----------

FOCUS_STYLE = """(e) => {
  const style = getComputedStyle(e);
  return { tag: e.tagName.toLowerCase(), id: e.id, text: (e.textContent || "").trim().slice(0, 40),
           outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0,
           shadow: style.boxShadow !== "none" };
}"""

CONTROLS_AND_LABELS = """() => [...document.querySelectorAll("input, select, textarea")]
  .filter((e) => e.type !== "hidden" && e.getClientRects().length)
  .map((e) => ({ id: e.id, label: e.labels && e.labels.length ? e.labels[0].textContent.trim() : null }))"""


def focus_stops(page: Page, count: int) -> list[dict]:
    """Press Tab ``count`` times from the top of a freshly loaded page; each focused element and
    whether its focus is visible (an outline or a box shadow)."""
    stops = []
    for _ in range(count):
        page.keyboard.press("Tab")
        stops.append(page.evaluate_handle("document.activeElement").evaluate(FOCUS_STYLE))
    return stops


def test_every_control_is_labelled(page: Page, worker: Docket):
    page.goto("/signin")
    pages = ["/signin", "/", "/reports", "/schedules", "/sources"]
    for path in pages:
        if path == "/":
            sign_in(page, worker.token("labels-person", admin=True))
        page.goto(path)
        expect(page.get_by_role("heading", level=2).first).to_be_visible()
        if path == "/reports":
            page.get_by_role("radio", name="Documents", exact=True).check()
            page.get_by_role("radio", name="Documents I select").check()
        controls = page.evaluate(CONTROLS_AND_LABELS)
        assert controls, path
        for control in controls:
            assert control["label"], f"no label for #{control['id']} on {path}"
            found = page.get_by_label(control["label"], exact=True)
            expect(found).to_have_count(1)
            assert found.evaluate("e => e.id") == control["id"], (path, control)


def test_keyboard_only_upload_and_search(page: Page, worker: Docket):
    # Sign in without the mouse.
    page.goto("/signin")
    token_stops = focus_stops(page, 6)
    assert "signin-token" in [s["id"] for s in token_stops], token_stops
    page.get_by_label("Token").focus()
    page.keyboard.type(worker.token("keyboard-person"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.locator("#documents-message")).to_have_text("No documents yet. Upload one above.")

    # Tab order: skip link, the navigation, sign out, then the upload form top to bottom, search.
    stops = focus_stops(page, 17)
    names = [s["id"] or s["text"] for s in stops]
    assert names == ["Skip to content", "Documents", "Reports", "Schedules", "Sources", "Sign out", "upload-file", "upload-urls",
                     "upload-password", "upload-reprocess", "upload-callback", "upload-delay", "upload-report",
                     "upload-button", "search-q", "Search", "refresh-button"], names
    invisible = [s for s in stops if not (s["outline"] or s["shadow"])]
    assert not invisible, f"focus not visible on: {invisible}"
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("button", name="Search", exact=True)).to_be_focused()

    # The skip link takes the keyboard past the header.
    page.reload()
    expect(page.locator("#documents-message")).to_have_text("No documents yet. Upload one above.")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    shot(page, "keyboard-skip-link")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Files", exact=True)).to_be_focused()
    shot(page, "keyboard-focus-files")

    # Choose a file from the keyboard, move to Upload, press Enter.
    name = "war-and-peace-ch1.txt"
    # Space opens a focused file input, Enter too. Once in four CI runs Chromium's own file
    # chooser did not open on the first Space (the input had the focus): try Space, then Enter,
    # before failing — both are the keyboard's way, and the focus is checked in between.
    chooser = None
    for key in ("Space", "Enter"):
        try:
            with page.expect_file_chooser(timeout=10_000) as opened:
                page.keyboard.press(key)
            chooser = opened.value
            break
        except PlaywrightTimeoutError:
            expect(page.get_by_label("Files", exact=True)).to_be_focused()
    assert chooser is not None, "neither Space nor Enter opened the file chooser"
    chooser.set_files(str(CORPUS / name))
    for expected in ("upload-urls", "upload-password", "upload-reprocess", "upload-callback", "upload-delay", "upload-report",
                     "upload-button"):
        page.keyboard.press("Tab")
        expect(page.locator(f"#{expected}")).to_be_focused()
    page.keyboard.press("Enter")
    expect(doc_row(page, name).locator(".doc-status")).to_have_text(re.compile(r"^Finished: "), timeout=JOB_MS)
    expect(page.locator("#upload-button")).to_be_focused()  # the keyboard's place is kept

    # Search: type, Enter.
    page.keyboard.press("Tab")
    expect(page.get_by_label("Search documents")).to_be_focused()
    page.keyboard.type("Prince Vasili")
    page.keyboard.press("Enter")
    expect(page.locator("#search-results .result").first.locator(".result-name")).to_have_text(name)
    shot(page, "keyboard-search")


# ---------- a document's own page ----------

def test_a_documents_page_from_the_list_and_a_search_hit_landing_on_the_chunk(page: Page, worker: Docket):
    from webapp.core.db import connection
    from webapp.core.models import Chunk, Document

    sign_in(page, worker.token("reader"))
    name = "war-and-peace-ch1.txt"
    upload(page, name)
    row = doc_row(page, name)
    expect(row.locator(".doc-status")).to_have_text(re.compile(r"^Finished: "), timeout=JOB_MS)
    # The readers of this branch make no headings or OCR marks for a text file: give its chunks
    # some, as the structure and OCR readers will, to see them on the page.
    with worker.app.app_context(), connection():
        document = Document.select().where(Document.owner == "reader").get()
        last = Chunk.select(Chunk.ordinal).where(Chunk.document == document.id).order_by(Chunk.ordinal.desc()).get()
        Chunk.update(headings=["War and Peace", "Book One", "Chapter I"]).where(Chunk.document == document.id).execute()
        Chunk.update(ocr=True, ocr_confidence=0.93).where(Chunk.document == document.id,
                                                          Chunk.ordinal == last.ordinal).execute()

    row.get_by_role("link", name=name).click()  # the name in the list links to the document's page
    expect(page).to_have_url(re.compile(rf"/documents/{document.id}$"))
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    expect(page.locator("#document-status")).to_have_text("finished")
    expect(page.locator("#document-chunks")).to_have_text(str(last.ordinal + 1))
    first = page.locator("#chunk-0")
    expect(first).to_contain_text("Well, Prince, so Genoa and Lucca")
    expect(first.get_by_role("navigation", name="Section of chunk 1")).to_have_text(
        re.compile(r"War and Peace\s*Book One\s*Chapter I"))
    expect(page.locator(f"#chunk-{last.ordinal} .chunk-ocr")).to_have_text("OCR · confidence 93 %")
    shot(page, "document-page")

    page.go_back()
    search = page.get_by_label("Search documents")
    search.fill("Novosiltsev's dispatch burnt his boats")
    search.press("Enter")
    hit = page.locator("#search-results .result").first
    expect(hit.locator(".result-headings")).to_have_text("War and Peace › Book One › Chapter I")
    link = hit.get_by_role("link", name=name)
    ordinal = int(re.search(r"#chunk-(\d+)$", link.get_attribute("href")).group(1))
    hit_text = hit.locator(".result-text").inner_text().rstrip("…")[:60]
    link.click()
    expect(page).to_have_url(re.compile(rf"/documents/{document.id}\?chunk={ordinal}#chunk-{ordinal}$"))
    target = page.locator(f"#chunk-{ordinal}")
    expect(target).to_be_in_viewport()  # the browser scrolled to the anchor
    expect(target.locator(".chunk-text")).to_contain_text(hit_text)
    assert page.evaluate("document.querySelector(':target') && document.querySelector(':target').id") == \
        f"chunk-{ordinal}"
    shot(page, "document-page-from-search")
