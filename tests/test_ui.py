"""The MLflow UI that `sweep server` serves, in a real browser: Debian's Chromium, headless, driven
by Playwright, over a finished two-trial sweep. Every step leaves a screenshot in test-artifacts/ui/.

`SWEEP_UI_SCREENSHOT=docs/mlflow-ui.png python -m pytest tests/test_ui.py` also writes the README's
picture of the UI (the experiment's runs with their charts)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest
from helpers import free_port, start_cli_server, study_dict, wait_health, write_study, write_tiny_npz
from mlflow import MlflowClient

import sweep

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright never downloads a browser here
SCREENSHOT_ENV = "SWEEP_UI_SCREENSHOT"
EPOCHS = 3  # a point per epoch: every trial's metric chart has 3
METRIC = "val_accuracy"
VIEWPORT = {"width": 1400, "height": 860}
WAIT_MS = 30_000  # the first page load parses MLflow's large JavaScript bundle: seconds on 2 cores
# MLflow's assistant panel opens itself on a first visit and covers a third of every screenshot:
# mark it as opened once and closed (it has nothing to do with what the tests check)
QUIET_ASSISTANT = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                   "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")


def _chromium() -> str:
    path = shutil.which("chromium") or CHROMIUM
    if not Path(path).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: the UI tests drive Debian's; install it with "
                    "`apt-get install -y chromium` (tests/setup-machine.sh, the README's test command, does)",
                    pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
    """Headless Chromium; fails (never skips) when it or Playwright is missing."""
    exe = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("the UI tests need Playwright: pip install -e '.[test]'", pytrace=False)
    expect.set_options(timeout=WAIT_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):  # no stale picture from an earlier run passes for this one's
        old.unlink()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True)
        yield b
        b.close()
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown on a passing run too
        print(f"\nUI screenshots: {SHOTS} ({len(list(SHOTS.glob('*.png')))} files)")


@pytest.fixture(scope="module")
def ui_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `sweep server` process on SQLite and a finished two-trial sweep logged to it over HTTP."""
    tmp = tmp_path_factory.mktemp("ui")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "server.log"
    proc = start_cli_server(["--port", str(port), "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp / "artifacts")], tmp, log)
    try:
        wait_health(url, proc, log)
        d = study_dict(write_tiny_npz(tmp / "tiny.npz", noise=200))  # noisy enough for curves that differ
        d["study"] = "ui-sweep"
        d["training"]["epochs"] = EPOCHS
        d["search"]["configs"] = d["search"]["configs"][:2]
        said = _Lines()
        study_log = logging.getLogger("sweep.runner.study")  # where the study's start line is said
        level = study_log.level
        study_log.addHandler(said)
        study_log.setLevel(logging.INFO)
        with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test working folder is not set yet
            mp.chdir(tmp)
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            mp.delenv("SWEEP_OPTUNA_STORAGE", raising=False)
            try:
                sweep.run(write_study(tmp, d), storage=f"sqlite:///{tmp / 'optuna.db'}", tracking_uri=url)
            finally:
                study_log.removeHandler(said)
                study_log.setLevel(level)
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(d["study"])
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
        trials = sorted((r for r in runs if r.data.tags.get("sweep.role") == "trial"),
                        key=lambda r: r.info.run_name)
        assert len(parents) == 1 and len(trials) == 2, [r.info.run_name for r in runs]
        yield {"url": url, "study": d["study"], "experiment_id": exp.experiment_id, "parent": parents[0],
               "trials": trials, "client": client, "said": said.lines}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(60)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a browser context of its own (fresh storage), the assistant panel left closed."""
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(WAIT_MS)
    ctx.add_init_script(QUIET_ASSISTANT)
    yield ctx.new_page()
    ctx.close()


def _shot(page: Page, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def _expand(page: Page, run_id: str) -> None:
    """Open a parent row of the runs table, so its child runs show."""
    page.locator(f'[role=row][row-id="{run_id}"] [role=gridcell][col-id="attributes.`Run Name`"] button').click()


def _chart(page: Page, metric: str) -> Any:
    """The chart card of one metric (run page or the runs' chart view)."""
    return page.get_by_test_id("experiment-view-compare-runs-card").filter(has=page.locator(f'h4[title="{metric}"]'))


def _run_link(page: Page, name: str) -> Any:
    """A run's name in the runs table (the parent's is also the experiment's, in the breadcrumbs)."""
    return page.get_by_role("gridcell").get_by_role("link", name=name, exact=True)


def test_experiment_opens_on_its_training_runs(browser: Browser, ui_sweep: dict[str, Any]) -> None:
    """The address `sweep run` prints for the study lands, on a first visit, on the experiment's runs
    table, not on MLflow 3's GenAI overview. (MLflow 3.17 takes the page from its GenAI / Model
    training switch, kept in the browser's storage and GenAI by default, not from the experiment's
    `mlflow.experimentKind` tag; `?workflowType=` in the address decides it.)"""
    from playwright.sync_api import expect

    eid = ui_sweep["experiment_id"]
    printed = [m.group(1) for line in ui_sweep["said"] for m in [re.search(r"browse (\S+)", line)] if m]
    assert printed == [f"{ui_sweep['url']}/#/experiments/{eid}/runs?workflowType=machine_learning"], ui_sweep["said"]
    ctx = browser.new_context(viewport=VIEWPORT)  # a first visit: nothing in the browser's storage
    ctx.set_default_timeout(WAIT_MS)
    try:
        page = ctx.new_page()
        page.goto(printed[0])
        # CSS, not the heading role: the GenAI overview opens a modal popover that hides the rest from ARIA
        heading = page.locator("h2").first
        expect(heading).to_be_visible()
        _shot(page, "1-experiment")
        assert re.search(rf"#/experiments/{eid}/runs(\?|$)", page.url), (
            f"the experiment opened on {page.url} ({heading.inner_text()!r}), not on its runs")
        expect(heading).to_have_text("Runs")
        parent = ui_sweep["parent"]
        expect(_run_link(page, parent.info.run_name)).to_be_visible()
        _expand(page, parent.info.run_id)
        for t in ui_sweep["trials"]:
            expect(_run_link(page, t.info.run_name)).to_be_visible()
    finally:
        ctx.close()


def test_runs_table_lists_the_parent_and_its_trials(page: Page, ui_sweep: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    eid, parent = ui_sweep["experiment_id"], ui_sweep["parent"]
    # the runs tab itself, on MLflow 3's "Model training" side of its GenAI / Model training switch
    page.goto(f"{ui_sweep['url']}/#/experiments/{eid}/runs?workflowType=machine_learning")
    expect(page.locator("h2").first).to_have_text("Runs")
    expect(_run_link(page, parent.info.run_name)).to_be_visible()
    _expand(page, parent.info.run_id)
    for t in ui_sweep["trials"]:
        expect(_run_link(page, t.info.run_name)).to_be_visible()
    _shot(page, "2-runs")

    docs = os.environ.get(SCREENSHOT_ENV)
    if docs:  # the README's picture: the trials beside their accuracy charts
        page.locator('label:has(input[name="runs-view-mode"][value="CHART"])').click()
        # the parent hidden from the charts: a legend lists its first two runs, drawn or not
        row = page.locator(f'[role=row][row-id="{parent.info.run_id}"]')
        row.locator("label:has(input.is-visibility-toggle-checkbox)").click()
        page.get_by_placeholder("Search metric charts").fill("accuracy")
        points = _chart(page, METRIC).locator("g.scatterlayer g.trace g.points path.point")
        expect(points).to_have_count(EPOCHS * len(ui_sweep["trials"]))
        path = ROOT / docs
        page.screenshot(path=path)
        print(f"README screenshot: {path}")


def test_parent_run_is_finished_with_its_summary(page: Page, ui_sweep: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    parent = ui_sweep["parent"]
    page.goto(f"{ui_sweep['url']}/#/experiments/{ui_sweep['experiment_id']}/runs/{parent.info.run_id}")
    expect(page.get_by_test_id("runs-header")).to_have_text(ui_sweep["study"])
    status = page.get_by_test_id("key-value-Status")
    expect(status).to_be_visible()
    _shot(page, "3-parent-run")
    expect(status).to_contain_text("Finished")
    children = page.get_by_test_id("key-value-Child runs")
    for t in ui_sweep["trials"]:
        expect(children.get_by_role("link", name=t.info.run_name, exact=True)).to_be_visible()

    def value(metric: str) -> str:
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=metric, exact=True))
        cell = row.get_by_role("cell").nth(1)
        expect(cell).to_have_text(re.compile(r"\S"))
        return cell.inner_text()

    assert value("trials_complete") == "2"
    for m in ("trials_pruned", "trials_fail", "trials_running"):
        assert value(m) == "0", m
    best = parent.data.metrics[f"best_{METRIC}"]
    assert float(value(f"best_{METRIC}")) == pytest.approx(best, abs=1e-3)
    best_trial = page.locator('[role=status][title="sweep.best.trial"]')
    expect(best_trial).to_have_text(f"sweep.best.trial: {parent.data.tags['sweep.best.trial']}")


def test_trial_metric_chart_has_a_point_per_epoch(page: Page, ui_sweep: dict[str, Any]) -> None:
    """The run page's chart of a per-epoch metric is a line through every epoch: the history the page
    fetched has one entry per epoch, and the plotted line has a marker for each. (A metric with one
    value is drawn as a bar, with no history fetched.)"""
    from playwright.sync_api import expect

    trial = ui_sweep["trials"][0]
    name, rid = trial.info.run_name, trial.info.run_id
    fetched: list[Any] = []

    def is_history(r: Any) -> bool:
        return "/metrics/get-history" in r.url and f"metric_key={METRIC}" in r.url and rid in r.url

    page.on("response", lambda r: fetched.append(r) if is_history(r) else None)
    page.goto(f"{ui_sweep['url']}/#/experiments/{ui_sweep['experiment_id']}/runs/{rid}/model-metrics")
    try:
        # a chart fetches its history when it scrolls into view: leave only this metric's on the page
        page.get_by_placeholder("Search metric charts").fill(METRIC)
        card = _chart(page, METRIC)
        expect(card.locator("g.trace").first).to_be_attached()  # drawn: a line, or a bar
        lines = card.locator("g.scatterlayer g.trace")
        assert lines.count() > 0, f"the {METRIC} chart of {name} is not a line (one value only?)"
        points = lines.first.locator("g.points path.point")
        expect(points.nth(1)).to_be_attached()  # more than one point
        stored = ui_sweep["client"].get_metric_history(rid, METRIC)
        assert fetched and fetched[-1].ok, [(r.url, r.status) for r in fetched]
        history = fetched[-1].json().get("metrics", [])
        assert len(history) == len(stored) > 1, f"{len(history)} {METRIC} value(s) fetched, {len(stored)} stored"
        expect(points).to_have_count(len(history))
        # and a line through them (plotly drops points in the middle of a straight run: no count here)
        expect(lines.first.locator("path.js-line").first).to_have_attribute("d", re.compile(r"^M[^M]*L"))
    finally:
        _shot(page, f"4-trial-{METRIC}")
