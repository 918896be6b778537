"""The ranking app in a real headless Chromium: log in, rank by dragging and by keyboard, see the next task,
the rows in SQLite; untrusted model text stays text; the admin page and its export.

Screenshots go to $AHA_LABEL_SHOTS (default /tmp/label-shots/): login.png, label.png, admin.png.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("playwright")
from browser import headless_page
from playwright.sync_api import expect  # noqa: E402

from aha.data.preferences import parse_preference
from aha.label.app import create_app
from aha.label.store import Store

SCRIPT = '<script>document.title="pwned";window.pwned=1</script><img src=x onerror="window.pwned=2">'
SHOTS = Path(os.environ.get("AHA_LABEL_SHOTS", "/tmp/label-shots"))
TASKS = [
    {"prompt": "Write a greeting. <b>not bold</b>", "completions": [SCRIPT, "Hello there!", "Hi :)"]},
    {
        "prompt": "What is 17 + 25?",
        "completions": ["42", "The answer is 42.", "41", "17 + 25 = 42 because 7 + 5 = 12, carry 1."],
    },
    {"prompt": "Name a prime number.", "completions": ["7", "9"]},
    {"prompt": "Tell me a joke.", "completions": ["Why did the GPU cross the road?", "No."]},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(db: Path, store: Store):
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(create_app(db, store=store), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def stored(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT r.task_id, l.name, r.ranking, r.skipped, r.flagged FROM rankings r JOIN labelers l "
            "ON l.id = r.labeler_id ORDER BY r.id"
        ).fetchall()


def log_in(page, base: str, token: str, lands_on: str):
    page.goto(f"{base}/login")
    page.fill("#token", token)
    page.click("#login-button")
    page.wait_for_url(f"{base}{lands_on}")


@pytest.mark.browser
def test_rank_by_drag_and_keyboard_then_admin_page(tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "rankings.sqlite"
    store = Store(db)
    store.set_per_task(2)
    store.add_tasks(TASKS)
    admin_token = store.ensure_admin()
    alice = store.add_labeler("alice")
    bob = store.user_for_token(store.add_labeler("bob"))["id"]
    for ranking in ([[1, 2], 0], [0, 1, 3, 2]):  # bob has done tasks 1 and 2, so there is agreement to show
        store.submit(bob, store.next_task(bob)["task_id"], ranking)

    with running_server(db, store) as base, headless_page(viewport={"width": 1280, "height": 860}) as page:
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{base}/login")
        page.screenshot(path=str(SHOTS / "login.png"))
        log_in(page, base, alice, "/")
        page.wait_for_selector("#task:not(.hidden)")
        assert page.text_content("#task-id") == "#1"

        # untrusted text: shown literally, never parsed as HTML, never run
        assert page.text_content('#pool .card[data-index="0"] .text') == SCRIPT
        assert page.text_content("#prompt") == TASKS[0]["prompt"]
        assert page.locator("#main img, #main script, #main b").count() == 0
        assert page.evaluate("window.pwned") is None and page.title() == "aha label · rank"

        # task 1 by dragging: "Hello there!" first, then the <script> one, then "Hi :)" dropped on place 1 (a tie)
        page.drag_and_drop('#pool .card[data-index="1"]', "#ranking .slot.end")
        page.drag_and_drop('#pool .card[data-index="0"]', "#ranking .slot.end")
        page.drag_and_drop('#pool .card[data-index="2"]', '#ranking .tier[data-tier="0"]')
        assert page.locator('#ranking .tier[data-tier="0"] .card').count() == 2
        assert page.text_content('#ranking .tier[data-tier="0"] .place') == "1="
        page.screenshot(path=str(SHOTS / "label.png"), full_page=True)
        assert page.is_enabled("#submit")
        page.click("#submit")
        expect(page.locator("#task-id")).to_have_text("#2")
        assert stored(db)[-1] == (1, "alice", "[[1, 2], [0]]", 0, 0)

        # task 2 by keyboard: 3, t 1 (tie), 4, undo, 2, Enter (the one left, 4, goes last) → [[0, 2], 1, 3]
        for key in ["3", "t", "1", "4", "u", "2"]:
            page.keyboard.press(key)
        assert page.locator("#pool .card").count() == 1
        page.keyboard.press("Enter")
        expect(page.locator("#task-id")).to_have_text("#3")  # the next task
        assert stored(db)[-1] == (2, "alice", "[[0, 2], [1], [3]]", 0, 0)
        expect(page.locator("#progress")).to_have_text(re.compile(r"^2 ranked"))  # refreshed after the next task shows

        # task 3 flagged as unsafe (f), task 4 skipped (s) → nothing left
        page.keyboard.press("f")
        expect(page.locator("#task-id")).to_have_text("#4")
        page.keyboard.press("s")
        page.wait_for_selector("#done:not(.hidden)")
        assert stored(db)[-2:] == [(3, "alice", None, 0, 1), (4, "alice", None, 1, 0)]
        assert dialogs == [] and page.evaluate("window.pwned") is None

        # the admin page: progress, labelers, agreement, flagged items, export
        page.click("#logout")
        page.wait_for_url(f"{base}/login")
        log_in(page, base, admin_token, "/admin")
        page.wait_for_selector("#labelers tbody tr:nth-child(2)")
        names = page.locator("#labelers tbody tr td:first-child").all_text_contents()
        assert names == ["alice", "bob"]
        assert "5 / 8 answered" in page.text_content("#progress-text")
        assert "over 2 tasks" in page.text_content("#agreement")
        assert page.text_content("#flagged tbody").startswith("#3alice")
        page.screenshot(path=str(SHOTS / "admin.png"), full_page=True)
        with page.expect_download() as download:
            page.click("#export")
        rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
        assert len(rows) == 4 and all(parse_preference(r).extra["labeler"] in ("alice", "bob") for r in rows)
        assert page.errors == []


KEYS = "123456789abcdeghijklmnopqr"  # label.js: card i's key
PHONE = {"width": 390, "height": 844}


def fits_the_width(page) -> bool:
    return page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth && document.body.scrollWidth <= window.innerWidth"
    )


def ranked_order(page) -> list[int]:
    return page.locator("#ranking .tier .card").evaluate_all("cs => cs.map(c => +c.dataset.index)")


def drag_far(page, source: str, target: str):
    """Drag ``source`` onto ``target`` when both do not fit on the screen at once: the page scrolls mid-drag, as a
    person's does (playwright's drag_and_drop only reaches targets on screen)."""
    page.locator(source).scroll_into_view_if_needed()
    box = page.locator(source).bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 30, box["y"] + box["height"] / 2, steps=3)
    page.evaluate("(sel) => document.querySelector(sel).scrollIntoView({block: 'center'})", target)
    box = page.locator(target).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()


@pytest.mark.browser
def test_26_completions_on_a_phone_by_keys_drag_and_taps(tmp_path):
    """390 × 844: no horizontal scroll, every control on screen and clickable; 26 cards picked by their keys (digits,
    then letters), by dragging (also to reorder ranked ones), by tapping, with the ▲ / ✕ buttons."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "rankings.sqlite"
    store = Store(db)
    long_word = "x" * 400  # one unbroken word: must wrap, not widen the page
    completions = [f"completion {KEYS[i]}: " + ("a fairly long sentence that wraps. " * (i % 3)) for i in range(26)]
    completions[7] = long_word
    store.add_tasks(
        [
            {"prompt": "Rank these 26. " + "y" * 300, "completions": completions},
            {"prompt": "A second task.", "completions": ["one", "two"]},
        ]
    )
    alice = store.add_labeler("alice")
    with running_server(db, store) as base, headless_page(viewport=PHONE) as page:
        page.goto(f"{base}/login?next=//evil.com")  # a hostile next: the login lands on the app's own page
        assert fits_the_width(page)
        page.screenshot(path=str(SHOTS / "phone-login.png"))
        log_in(page, base, alice, "/")
        page.wait_for_selector("#task:not(.hidden)")
        assert page.locator("#pool .card").count() == 26
        assert page.locator(".card .badge").all_text_contents() == list(KEYS)
        assert fits_the_width(page)
        for control in ("#undo", "#tie", "#skip", "#flag", "#submit", "#logout"):
            loc = page.locator(control)
            loc.scroll_into_view_if_needed()
            assert loc.is_visible() and loc.bounding_box()["x"] + loc.bounding_box()["width"] <= PHONE["width"]
            if control != "#submit":  # disabled until the ranking is complete
                loc.click(trial=True)  # actionable: visible, stable, enabled, not covered by anything
        page.screenshot(path=str(SHOTS / "phone-label.png"))

        # keys past 9 are letters: a = completion 9, r = completion 25 (t would be "tie", so it is no card's key)
        for key in ["a", "r", "t", "1"]:
            page.keyboard.press(key)
        assert page.locator("#ranking .tier").count() == 2
        assert page.text_content('#ranking .tier[data-tier="1"] .place') == "2="
        # drag from far down the pool to the end, then the ranked 20 to the very top: [[20], [9], [0, 25]]
        drag_far(page, '#pool .card[data-index="20"]', "#ranking .slot.end")
        page.drag_and_drop('#ranking .card[data-index="20"]', '#ranking .slot[data-pos="0"]')
        assert ranked_order(page) == [20, 9, 0, 25]
        # taps: ▲ moves the tie [0, 25] above 9; ✕ unranks 20; tapping pool cards picks them
        page.locator('#ranking .tier[data-tier="2"] .moves button').first.click()
        page.locator('#ranking .card[data-index="20"] button.mini').click()
        assert ranked_order(page) == [0, 25, 9]
        assert page.locator("#pool .card").count() == 23
        assert fits_the_width(page)
        page.screenshot(path=str(SHOTS / "phone-ranking.png"), full_page=True)
        for i in [i for i in range(26) if i not in (0, 9, 25)][:-1]:
            page.locator(f'#pool .card[data-index="{i}"]').click()
        page.locator("#submit").click()  # the one left (24) goes last
        expect(page.locator("#task-id")).to_have_text("#2")
        rest = [i for i in range(1, 25) if i != 9]
        assert json.loads(stored(db)[-1][2]) == [[0, 25], [9], *[[i] for i in rest]]
        assert fits_the_width(page) and page.errors == []


@pytest.mark.browser
def test_admin_revokes_a_labeler_from_the_admin_page(tmp_path):
    import httpx

    db = tmp_path / "rankings.sqlite"
    store = Store(db)
    store.add_tasks(TASKS)
    admin_token = store.ensure_admin()
    bob_token = store.add_labeler("bob")
    bob = store.user_for_token(bob_token)["id"]
    store.submit(bob, store.next_task(bob)["task_id"], [0, 1, 2])
    with running_server(db, store) as base, headless_page() as page:
        page.goto(f"{base}/login?next=/admin")
        page.fill("#token", admin_token)
        page.click("#login-button")
        page.wait_for_url(f"{base}/admin")
        button = page.locator('#labelers button.revoke[data-name="bob"]')
        button.click()
        expect(button).to_have_text("confirm: revoke bob")  # two clicks: no revoking by accident
        assert httpx.get(f"{base}/api/me", headers={"Authorization": f"Bearer {bob_token}"}).status_code == 200
        page.locator('#labelers button.revoke[data-name="bob"]').click()
        expect(page.locator("#status")).to_contain_text("revoked bob")
        expect(page.locator("#labelers tbody tr").first).to_contain_text("revoked")
        assert httpx.get(f"{base}/api/me", headers={"Authorization": f"Bearer {bob_token}"}).status_code == 401
        assert stored(db) == [(1, "bob", "[[0], [1], [2]]", 0, 0)]  # his ranking stays
        page.screenshot(path=str(SHOTS / "admin-revoked.png"), full_page=True)
        assert page.errors == []
