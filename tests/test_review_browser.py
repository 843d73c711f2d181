"""The review page in a real headless browser (Debian's chromium + chromium-driver via selenium):
play a detection, judge it from the keyboard, find the verdict in the database."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tests.review_helpers import make_review_db, review_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not shutil.os.path.exists(CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--window-size=1200,1600"):
        options.add_argument(flag)
    # The Debian driver by path: selenium's manager would try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def review_db(tmp_path):
    return make_review_db(tmp_path)


def _press(browser, keys: str) -> None:
    webdriver.ActionChains(browser).send_keys(keys).perform()


def test_play_then_judge_from_the_keyboard(browser, review_db):
    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        browser.get(base + "/?order=time")
        rows = browser.find_elements(By.CSS_SELECTOR, "li.detection")
        assert len(rows) == 4
        first = rows[0]
        assert "current" in first.get_attribute("class")
        # The spectrogram came from the server as an image the browser could decode.
        WebDriverWait(browser, 10).until(lambda b: b.execute_script(
            "const i = arguments[0]; return i.complete && i.naturalWidth > 0;",
            first.find_element(By.CSS_SELECTOR, "img.spec")))
        _press(browser, " ")  # play
        WebDriverWait(browser, 15).until(lambda b: b.execute_script(
            "return document.querySelector('li.detection.current audio').currentTime > 0.3;"))
        _press(browser, " ")  # pause
        _press(browser, "w")  # wrong: stored, and the next row becomes current
        WebDriverWait(browser, 10).until(lambda b: "judged-wrong" in first.get_attribute("class"))
        assert "current" in rows[1].get_attribute("class")
        _press(browser, "l")
        _press(browser, "2")  # second label in the list: great_argus
        WebDriverWait(browser, 10).until(lambda b: "judged-relabel" in rows[1].get_attribute("class"))
        _press(browser, "c")
        WebDriverWait(browser, 10).until(lambda b: "judged-correct" in rows[2].get_attribute("class"))
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT detection_id, source, start_s, verdict, new_label, reviewer FROM reviews "
                              "ORDER BY id").fetchall()
    first_id, second_id, third_id = (int(r.get_attribute("data-id")) for r in rows[:3])
    assert stored == [(first_id, "S01/20240501_060000.WAV", 2.0, "wrong", None, "tester"),
                      (second_id, "S01/20240501_060000.WAV", 10.0, "relabel", "great_argus", "tester"),
                      (third_id, "S01/20240502_070000.WAV", 4.0, "correct", None, "tester")]


def test_token_is_required_beyond_localhost(browser, review_db):
    db, recordings = review_db
    with review_server(db, recordings, "--token", "s3cret-token", host="0.0.0.0") as (base, url_line):
        assert url_line.endswith("?token=s3cret-token")
        browser.delete_all_cookies()
        browser.get(base + "/")
        assert "token is required" in browser.find_element(By.TAG_NAME, "body").text
        browser.get(base + "/?token=s3cret-token&order=time")   # sets the cookie, drops the token from the URL
        assert "token" not in browser.current_url
        rows = browser.find_elements(By.CSS_SELECTOR, "li.detection")
        assert len(rows) == 4
        _press(browser, "u")
        WebDriverWait(browser, 10).until(lambda b: "judged-unsure" in rows[0].get_attribute("class"))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT verdict FROM reviews").fetchall() == [("unsure",)]


def test_a_verdict_key_pressed_twice_before_the_answer_moves_one_row_on(browser, review_db):
    """A review: each answer moved on from the row current when it came, so 'c' pressed twice
    before the first answer (a bouncing key, an impatient hand) moved two rows and the row between
    was never seen. Both presses are dispatched in one script, before either answer."""
    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        browser.get(base + "/?order=time")
        rows = browser.find_elements(By.CSS_SELECTOR, "li.detection")
        browser.execute_script("""
            for (let n = 0; n < 2; n++)
                document.dispatchEvent(new KeyboardEvent('keydown', {key: 'c', bubbles: true}));""")
        WebDriverWait(browser, 10).until(lambda b: "judged-correct" in rows[0].get_attribute("class"))
        answers = ("return performance.getEntriesByType('resource')"
                   ".filter(e => e.name.endsWith('/api/verdict')).length;")
        WebDriverWait(browser, 10).until(lambda b: b.execute_script(answers) == 2)   # both answers are in
        browser.execute_async_script("setTimeout(arguments[arguments.length - 1], 200);")   # and handled
        assert _verdicts(db) == [("correct",)]
        assert "current" in rows[1].get_attribute("class") and "current" not in rows[2].get_attribute("class")


def _verdicts(db) -> list:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT verdict FROM reviews").fetchall()


def test_another_sites_page_can_neither_frame_the_page_nor_load_its_audio(browser, review_db, tmp_path):
    """Bound to 127.0.0.1 there is no token: a web page the reviewer visited framed the review page
    invisibly, and the keys typed into it ("www" in a game) were stored as verdicts; its <img> and
    <audio> loaded detections' spectrograms and audio (a security review). The attacker's page is
    served here from another site (localhost is not 127.0.0.1's site)."""
    import functools
    import http.server
    import threading

    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        (tmp_path / "evil").mkdir()
        (tmp_path / "evil" / "index.html").write_text(
            f'<!doctype html><iframe id="f" src="{base}/" style="width:1100px;height:1400px"></iframe>'
            f'<img id="probe" src="{base}/detections/1/spectrogram.png" '
            f'onload="document.title=\'loaded\'" onerror="document.title=\'refused\'">')
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "evil"))
        evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://localhost:{evil.server_address[1]}/index.html")
            WebDriverWait(browser, 10).until(lambda b: b.title in ("loaded", "refused"))
            assert browser.title == "refused"
            frame = browser.find_element(By.ID, "f")
            webdriver.ActionChains(browser).move_to_element(frame).click().send_keys("www").perform()
            browser.execute_async_script("setTimeout(arguments[arguments.length - 1], 1000);")
            browser.switch_to.frame(frame)
            assert browser.find_elements(By.CSS_SELECTOR, "li.detection") == []
        finally:
            browser.switch_to.default_content()
            evil.shutdown()
            evil.server_close()
    assert _verdicts(db) == []


def test_the_precision_table_follows_the_verdicts_given_on_the_page(browser, review_db):
    """A team trial: the table kept the counts of when the page was loaded, so after an hour of
    verdicts it still said 0 judged, beside /api/precision and the export."""
    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        browser.get(base + "/?order=time")
        rows = browser.find_elements(By.CSS_SELECTOR, "li.detection")
        assert [r.get_attribute("data-label") for r in rows[:2]] == ["hornbill_helmeted", "gibbon_duet"]

        def cells(label: str) -> list[str]:
            row = browser.find_element(By.CSS_SELECTOR, f'table.precision tr[data-label="{label}"]')
            return [td.text for td in row.find_elements(By.TAG_NAME, "td")[1:]]

        assert cells("hornbill_helmeted")[:3] == ["0", "0", "–"]
        _press(browser, "c")
        WebDriverWait(browser, 10).until(lambda b: cells("hornbill_helmeted")[:3] == ["1", "1", "1.00"])
        assert cells("hornbill_helmeted")[3] == "0.21–1.00"      # the Wilson interval of 1 of 1
        _press(browser, "w")
        WebDriverWait(browser, 10).until(lambda b: cells("gibbon_duet")[:3] == ["1", "0", "0.00"])


def test_on_a_narrow_screen_the_page_does_not_scroll_sideways(browser, review_db):
    """A team trial: on a phone the precision table was wider than the screen, and the whole page,
    the detection being judged with it, scrolled sideways."""
    db, recordings = review_db
    size = browser.get_window_size()
    browser.set_window_size(360, 780)
    try:
        with review_server(db, recordings) as (base, _):
            browser.get(base + "/?order=time")
            assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth;")
    finally:
        browser.set_window_size(size["width"], size["height"])


def test_a_colleagues_verdict_shows_on_the_open_page(browser, review_db):
    """A team trial: the verdicts another reviewer gave were seen only on reload, so two people
    judged the same rows. The page asks for its rows' verdicts as it comes back into view (and
    every few seconds while in view)."""
    from edgemon.review.reviews import add_verdict

    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        browser.get(base + "/?order=time")
        rows = browser.find_elements(By.CSS_SELECTOR, "li.detection")
        second = rows[1]
        assert second.find_element(By.CSS_SELECTOR, ".verdict").text == ""
        add_verdict(db, int(second.get_attribute("data-id")), "wrong", "colleague")
        browser.execute_script("window.dispatchEvent(new Event('focus'));")
        WebDriverWait(browser, 10).until(lambda b: "judged-wrong" in second.get_attribute("class"))
        assert second.find_element(By.CSS_SELECTOR, ".verdict").text == "wrong (by colleague)"
        _press(browser, "c")   # the page's own reviewer, on the first row: no "(by ...)"
        WebDriverWait(browser, 10).until(lambda b: "judged-correct" in rows[0].get_attribute("class"))
        assert rows[0].find_element(By.CSS_SELECTOR, ".verdict").text == "correct"


def test_a_verdict_refresh_leaves_rows_that_are_no_longer_the_detection_shown(browser, review_db):
    """A review: the page's refresh asked for its rows' verdicts by id alone, and cleared every row
    missing from the answer. A row judged here whose detection reanalyse then replaced (its
    verdict followed the new row) looked unjudged, and after a restore (or another database at
    the same address) a row showed the verdict of whatever detection now held its id: what the
    key (``k``) keeps from the page's audio and verdicts."""
    from edgemon.review.reviews import add_verdict

    db, recordings = review_db
    with review_server(db, recordings) as (base, _):
        browser.get(base + "/?order=time")
        rows = browser.find_elements(By.CSS_SELECTOR, "li.detection")
        ids = [int(r.get_attribute("data-id")) for r in rows]
        _press(browser, "c")
        WebDriverWait(browser, 10).until(lambda b: "judged-correct" in rows[0].get_attribute("class"))
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM detections WHERE id = ?", [ids[0]])           # reanalysed away
            conn.execute("UPDATE detections SET start_s = start_s + 0.5 WHERE id = ?", [ids[2]])  # another one now
        conn.close()
        add_verdict(db, ids[2], "wrong", "colleague")
        add_verdict(db, ids[1], "unsure", "colleague")   # seen once the refresh has answered
        browser.execute_script("window.dispatchEvent(new Event('focus'));")
        WebDriverWait(browser, 10).until(lambda b: "judged-unsure" in rows[1].get_attribute("class"))
        assert rows[0].find_element(By.CSS_SELECTOR, ".verdict").text == "correct"
        assert rows[2].find_element(By.CSS_SELECTOR, ".verdict").text == ""
