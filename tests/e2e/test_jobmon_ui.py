"""The Jobmon pages in Airflow's UI, end to end: Airflow's real services (API server with the Jobmon plugin,
scheduler, DAG processor, triggerer) with a password login, a DAG with a failing and a memory-killed task on the
real Grid Engine cluster, then headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium with the driver's path given, so Selenium Manager never runs) logs in and reads the pages.

Screenshots of every step land in ``$JOBMON_TEST_ARTIFACTS/jobmon_ui`` (default: the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import free_port, require_service
from tests.support.airflow_services import AirflowAPI, airflow_services, services_env, wait_for

pytestmark = [pytest.mark.airflow_services, pytest.mark.gridengine]

DAG_ID = "e2e_jobmon_ui"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "jobmon-e2e-secret"
WAIT = 60  # seconds for a page to show what it should (a loaded machine renders slowly)

# A memory kill as in tests/integration/test_operator_gridengine.py, with one child more for a margin both ways:
# four children of 60 MiB, ≈ 300 MB of virtual memory together (three measured 236 MB), over h_vmem=240M (the
# execd kills the job: failed 37, exit 137); 1.5 × 240M = 360M fits.
CHILD = "import time; b = bytearray(60 * 2**20); time.sleep(10)"
FOUR_CHILDREN = (
    f"{sys.executable} -c \"import subprocess, sys; ps = [subprocess.Popen([sys.executable, '-c', '{CHILD}'])"
    ' for _ in range(4)]; sys.exit(max(p.wait() for p in ps))"'
)
DAG = textwrap.dedent(
    f"""
    from datetime import datetime, timedelta
    from airflow.sdk import DAG
    from jobmon_airflow.operators import JobmonTaskOperator

    FAST = {{"poll_interval": 1.0, "retry_delay": timedelta(0), "cluster": "gridengine"}}
    with DAG({DAG_ID!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
        JobmonTaskOperator(task_id="fine", command="echo fine", compute_resources={{"memory": "200M"}}, **FAST)
        JobmonTaskOperator(task_id="broken", command="echo 'boom: the input file is corrupt' >&2; exit 3",
                           max_attempts=1, compute_resources={{"memory": "200M"}}, **FAST)
        JobmonTaskOperator(task_id="hog", command={FOUR_CHILDREN!r},
                           compute_resources={{"memory": "240M", "runtime": 120}}, **FAST)
    """
)


class LoggedInAPI(AirflowAPI):
    """Airflow's REST API with a bearer token (the services run without all-admins)."""

    token = ""

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read() or b"null")

    def login(self) -> None:
        self.token = ""
        self.token = str(
            self.request("POST", "/auth/token", {"username": "admin", "password": PASSWORD})["access_token"]
        )


@dataclass
class Run:
    api: LoggedInAPI
    run_id: str
    artifacts: Path


@pytest.fixture(scope="module")
def run(gridengine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    for path in (CHROMIUM, CHROMEDRIVER):
        require_service(None if shutil.which(path) else f"{path} missing", "Chromium (scripts/services/browser)")
    home = tmp_path_factory.mktemp("jobmon-ui")
    artifacts = Path(os.environ.get("JOBMON_TEST_ARTIFACTS") or home) / "jobmon_ui"
    artifacts.mkdir(parents=True, exist_ok=True)
    dags = home / "dags"
    dags.mkdir()
    (dags / "e2e_ui_dag.py").write_text(DAG)
    port = free_port()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    passwords.chmod(0o600)
    env = {
        **services_env(home, dags, port, parallelism=4),
        **gridengine,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",  # a real login, a real token
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW_CONN_JOBMON_DEFAULT": json.dumps({"conn_type": "jobmon", "extra": {"cluster": "gridengine"}}),
        "AIRFLOW_CONN_GRIDENGINE_DEFAULT": json.dumps(
            {"conn_type": "gridengine", "extra": {"log_dir": str(home / "sge-logs"), "poll_interval": 1}}
        ),
    }
    logs = home / "logs"
    try:
        with airflow_services(env, port, logs, migrate_timeout=300, stop_timeout=20) as plain:
            api = LoggedInAPI(port, env, timeout=60)
            api.services = plain.services
            api.wait_healthy(180)
            api.login()
            api.unpause(DAG_ID, timeout=120)
            run_id = api.trigger(DAG_ID)
            wait_for(lambda: api.run_state(DAG_ID, run_id) in ("success", "failed"), 300, "the DAG run")
            yield Run(api, run_id, artifacts)
    finally:
        for log in sorted(logs.glob("*.log")):  # visible when a test failed
            print(f"==== {log.name} (tail) ====\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def browser(run: Run) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1000", "--lang=en-US"):  # fmt: skip
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # belt and braces: with both paths given, Selenium Manager has nothing to do
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser on Airflow's UI, with screenshots of each step."""

    def __init__(self, driver: Any, run: Run):
        self.d, self.run, self.base, self.step = driver, run, run.api.base, 0

    def until(self, what: str, check: Callable[[], Any]) -> Any:
        from selenium.common.exceptions import WebDriverException

        deadline = time.monotonic() + WAIT
        while True:
            try:
                result = check()
                if result:
                    return result
            except WebDriverException:
                pass
            if time.monotonic() > deadline:
                self.shot(f"timeout-{what}")
                raise AssertionError(f"timed out waiting for {what}; page text:\n{self.text()[:3000]}")
            time.sleep(0.5)

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.d.find_element(By.TAG_NAME, "body").text)

    def shot(self, name: str) -> None:
        self.step += 1
        self.d.save_screenshot(str(self.run.artifacts / f"{self.step:02d}-{name}.png"))

    def in_jobmon_frame(self, expect: str) -> str:
        """Enter the iframe Airflow renders the Jobmon page in, and wait until it shows ``expect``."""
        from selenium.webdriver.common.by import By

        self.d.switch_to.default_content()
        frame = self.until(
            "Airflow's Jobmon frame", lambda: self.d.find_elements(By.CSS_SELECTOR, "iframe[title=Jobmon]")
        )
        self.d.switch_to.frame(frame[0])
        return str(self.until(f"{expect!r} in the Jobmon page", lambda: expect in self.text() and self.text()))

    def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        self.until(f"a link {css}", lambda: self.d.find_elements(By.CSS_SELECTOR, css))[0].click()


def test_browser_reads_the_jobmon_pages_inside_airflow(run: Run, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    page = Page(browser, run)
    # Log in with Airflow's own login form.
    browser.get(f"{page.base}/auth/login?next=/")
    page.until("the login form", lambda: browser.find_elements(By.NAME, "username"))
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    page.shot("login")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    page.until("Airflow's home page", lambda: "/auth/login" not in browser.current_url and "Jobmon" in page.text())

    # "Jobmon" in Airflow's navigation opens the workflows page inside Airflow.
    page.click("a[href$='/plugin/jobmon']")
    text = page.in_jobmon_frame(DAG_ID)
    page.shot("workflows")
    row = browser.find_element(By.XPATH, f"//tr[td//span[@class='dag' and text()='{DAG_ID}']]")
    legend = {
        e.get_attribute("data-bucket"): e.text.split()[-1] for e in row.find_elements(By.CSS_SELECTOR, ".bucket-key")
    }
    assert legend == {"PENDING": "0", "SCHEDULED": "0", "RUNNING": "0", "DONE": "2", "FATAL": "1"}, text

    # The workflow: per-template progress, its tasks, the errors grouped.
    row.find_element(By.CSS_SELECTOR, "td a").click()
    text = page.in_jobmon_frame("Errors, grouped")
    page.shot("workflow")
    templates = [e.get_attribute("data-template") for e in browser.find_elements(By.CSS_SELECTOR, "tr[data-template]")]
    assert sorted(templates) == ["broken", "fine", "hog"], text
    errors = text.split("Errors, grouped")[1]
    assert "boom: the input file is corrupt" in errors, errors

    # The memory-killed task: Z, then the retry with 1.5 × the memory.
    hog = browser.find_element(By.XPATH, "//tr[@data-task-id][td[2]/a[text()='hog']]")
    hog.find_element(By.CSS_SELECTOR, "td a").click()
    text = page.in_jobmon_frame("Instances")
    page.shot("killed-task")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-instance-id]")
    assert [r.get_attribute("data-status") for r in rows] == ["D", "Z"], text
    assert "RESOURCE_ERROR" in rows[1].text and "240" in rows[1].text, rows[1].text
    assert "×1.5" in rows[0].text and "360" in rows[0].text, rows[0].text

    # Resources: the scatter plots drawn by plotly.js (served from the package), the CSV link working.
    browser.find_element(By.CSS_SELECTOR, "header .crumbs a[href*='/ui/workflows/']").click()
    page.in_jobmon_frame("Errors, grouped")
    page.click("a.button[href$='/resources']")
    text = page.in_jobmon_frame("Resource usage of workflow")
    page.until("the plots", lambda: browser.find_elements(By.CSS_SELECTOR, ".plot[data-rendered] svg.main-svg"))
    page.shot("resources")
    assert "suggested request" in text and "hog" in text, text
    csv_href = browser.find_element(By.ID, "csv").get_attribute("href")
    csv = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.text().then(t => done(r.status + '\\n' + t))).catch(e => done(String(e)));",
        csv_href,
    )
    assert csv.startswith("200\n") and "hog" in csv, csv[:500]

    # The DAG run's and the task instance's "Jobmon" views, and the operator's extra link.
    run_id = quote(run.run_id, safe="")
    browser.switch_to.default_content()
    browser.get(f"{page.base}/dags/{DAG_ID}/runs/{run_id}/plugin/jobmon-dag-run")
    page.in_jobmon_frame("Errors, grouped")
    page.shot("dag-run-view")
    browser.switch_to.default_content()
    browser.get(f"{page.base}/dags/{DAG_ID}/runs/{run_id}/tasks/hog/plugin/jobmon-task-instance")
    text = page.in_jobmon_frame("Instances")
    assert "Task" in text and "hog" in text and "RESOURCE_ERROR" in text, text
    page.shot("task-instance-view")
    links = run.api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/broken/links")
    link = links["extra_links"]["Jobmon"]
    assert link.startswith(f"{page.base}/plugin/jobmon/jobmon/ui/task-instance?"), links
    browser.switch_to.default_content()
    browser.get(link)
    text = page.in_jobmon_frame("Instances")
    assert "broken" in text and "boom: the input file is corrupt" in text, text
    page.shot("extra-link")


def test_pages_refuse_requests_without_airflows_token(run: Run) -> None:
    """The plugin's pages are mounted unauthenticated by Airflow: they check the token themselves."""
    import urllib.error

    for path in ("/jobmon/ui/workflows", "/jobmon/ui/static/plotly.min.js"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(run.api.base + path, timeout=30)
        assert refused.value.code == 401
        assert "frame-ancestors 'self'" in refused.value.headers["Content-Security-Policy"]
        req = urllib.request.Request(run.api.base + path, headers={"Authorization": f"Bearer {run.api.token}"})
        with urllib.request.urlopen(req, timeout=30) as ok:
            assert ok.status == 200
