"""The web page in real headless Chromium (Debian's, driven by Playwright): sign in, the sync
list, a run's rejected rows, a plan preview, and approving a held run. Screenshots of the
pages are kept in ``artifacts/`` (or ``$TIDEGATE_ARTIFACTS``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from conftest import SECRET
from helpers import project, sync, warehouse
from serverkit import TOKEN, LiveServer
from tidegate.sandbox.webhook import WebhookReceiver

CHROMIUM = "/usr/bin/chromium"
# The machine's network is closed: nothing may reach for updates, sync or QUIC.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("TIDEGATE_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts"))
ROWS = 40


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture
def server(project_dir: Path, receiver: WebhookReceiver) -> Iterator[LiveServer]:
    warehouse(project_dir / "warehouse.duckdb", ROWS)
    hook = {"type": "webhook", "url": receiver.url, "secret": "${HOOK_SECRET}"}
    project(project_dir, {"hook": hook}, {
        "accounts": sync(schedule="0 * * * *"),
        "capped": sync(object="Capped", guardrails={"max_rows": 5}),
    })
    receiver.reject_keys([7, 11, 13], "email address is not valid")
    with LiveServer(project_dir, token=TOKEN, env={"HOOK_SECRET": SECRET},
                    schedule=True) as live:
        yield live


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"server-page-{name}.png"), full_page=True)


def test_the_page_lists_syncs_shows_rejected_rows_and_approves_a_held_run(
        server: LiveServer, page: Page, receiver: WebhookReceiver) -> None:
    partial = server.wait(server.client.post("/api/syncs/accounts/runs").json()["run_id"])
    held = server.wait(server.client.post("/api/syncs/capped/runs").json()["run_id"])
    assert (partial["status"], held["status"]) == ("partial", "held")
    seen: list[str] = []
    page.on("response", lambda r: seen.append(r.text()) if "html" in r.headers.get(
        "content-type", "") else None)

    # Signing in: the page asks for the token once.
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")

    # The list: every sync with its id, schedule and last run.
    expect(page.locator("h1")).to_have_text("Syncs")
    rows = page.locator("tr[data-sync-row]")
    expect(rows).to_have_count(2)
    accounts = page.locator('tr[data-sync-row="accounts"]')
    expect(accounts).to_contain_text("#1")
    expect(accounts).to_contain_text("0 * * * *")
    expect(accounts).to_contain_text("next in")
    expect(accounts.locator(".badge")).to_have_text("partial")
    expect(page.locator('tr[data-sync-row="capped"] .badge')).to_have_text("held")

    # A plan preview, fetched by the page's script; it sends nothing.
    sent_before = len(receiver.batches)
    accounts.get_by_role("button", name="Preview plan").click()
    preview = page.locator('[data-preview-for="accounts"]')
    expect(preview).to_contain_text("Plan for accounts")
    expect(preview).to_contain_text("Guardrails: pass")
    assert len(receiver.batches) == sent_before
    shot(page, "syncs")

    # A run's detail: its counts and every rejected row with the destination's reason.
    page.click(f'a[href="/runs/{partial["run_id"]}"] >> nth=0')
    expect(page.locator("h1")).to_contain_text(f"Run #{partial['run_id']}")
    rejected = page.locator("table.rows tbody tr")
    expect(rejected).to_have_count(3)
    expect(rejected.first).to_contain_text("email address is not valid")
    expect(page.locator(".card").first).to_contain_text(str(ROWS))
    shot(page, "run")

    # A held run: its reason, then Approve (confirmed in the dialog) sends it.
    page.goto(f"{server.url}/runs/{held['run_id']}")
    expect(page.locator(".callout.held")).to_contain_text("at most 5")
    shot(page, "held")
    receiver.reject_keys([])
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Approve and send").click()
    expect(page.locator("h1 .badge")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator(".callout.held")).to_have_count(0)
    shot(page, "approved")

    assert len(receiver.records("Capped")) == ROWS
    after: dict[str, Any] = server.client.get(f"/api/runs/{held['run_id']}").json()
    assert after["status"] == "succeeded" and after["verdict"]["approved"] is True
    assert seen and not any(TOKEN in html for html in seen)
    assert (ARTIFACTS / "server-page-approved.png").stat().st_size > 10_000
