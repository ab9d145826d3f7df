"""The dashboard in headless Chromium against a real API server with a finished ``smoke`` job: sign-in, the
jobs list, the job page (stages, charts, stats, downloads, events), Cancel from the button, the new-job form,
and the layout at laptop and wide-screen widths (with ``TWOFOLD_UPDATE_SCREENSHOTS=1`` it rewrites
docs/img/jobs.png and docs/img/job.png).

Runs in file order: the Cancel and form tests add jobs that the screenshots then show."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.dashboard.conftest import IMG_DIR, LAPTOP, WIDE, bearer, wait_for_job
from tests.sdk.servers import ApiServer

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1200)]

STAGES = ["teacher_sampling", "sft", "labeling", "reward_model", "rl", "evaluation"]
SignIn = Callable[[Any], Any]


def api_get(server: ApiServer, path: str) -> Any:
    """GET a /v1 path with the main tenant's key; asserts 200."""
    r = httpx.get(f"{server.url}{path}", headers=bearer(server))
    assert r.status_code == 200, r.text
    return r.json()


def stat(page: Any, card: str, name: str) -> str:
    """The value shown for the statistic ``name`` in the element ``card``."""
    box = page.locator(f"{card} .stat").filter(has=page.locator(".name", has_text=re.compile(f"^{name}$")))
    return str(box.locator(".value").inner_text())


def shows_pct(text: str, x: float) -> bool:
    """``text`` is ``x`` as a percentage with one decimal (JavaScript rounds halves up, Python to even)."""
    match = re.fullmatch(r"(-?\d+\.\d)%", text.strip())
    return match is not None and abs(float(match.group(1)) - x * 100) <= 0.05 + 1e-9


def test_sign_in_refuses_a_wrong_key_and_keeps_the_right_one_in_an_httponly_cookie(
    page: Any, dash_server: ApiServer, signed_in: SignIn
) -> None:
    page.goto(f"{dash_server.url}/dashboard/jobs?status=running")
    assert "/dashboard/login" in page.url  # not signed in: sent to the sign-in page

    page.fill("#api_key", "tf_not-a-real-key")
    with page.expect_response(lambda r: r.url.endswith("/dashboard/login")) as answer:
        page.click("#login-form button[type=submit]")
    assert answer.value.status == 401
    assert "invalid or revoked" in page.inner_text("#login-error")
    assert page.context.cookies() == []

    page.fill("#api_key", dash_server.api_key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#jobs-table")
    assert page.url.endswith("/dashboard/jobs?status=running")  # back where it was going
    assert page.input_value("#status-filter") == "running"
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["value"] == dash_server.api_key
    assert page.evaluate("document.cookie") == ""  # page scripts cannot read the key
    assert page.inner_text(".who strong") == "sdk-tests"

    page.click("#sign-out")
    page.wait_for_selector("#login-form")
    assert page.context.cookies() == []
    page.goto(f"{dash_server.url}/dashboard/new")
    assert "/dashboard/login" in page.url


def test_cookie_requests_see_only_the_tenant_and_posts_need_the_csrf_header(
    dash_server: ApiServer, smoke_job: dict[str, Any]
) -> None:
    url = dash_server.url
    mine = {"twofold_dashboard": dash_server.api_key}
    other = {"twofold_dashboard": dash_server.other_key}
    assert httpx.get(f"{url}/v1/jobs/{smoke_job['id']}", cookies=mine).json()["id"] == smoke_job["id"]
    assert httpx.get(f"{url}/v1/jobs/{smoke_job['id']}", cookies=other).status_code == 404
    assert httpx.get(f"{url}/v1/jobs", cookies={"twofold_dashboard": "tf_revoked"}).status_code == 401

    no_header = httpx.post(f"{url}/v1/jobs", cookies=mine, json={"preset": "smoke"})
    assert no_header.status_code == 403
    assert no_header.json()["error"]["param"] == "X-Twofold-CSRF"
    with_header = httpx.post(f"{url}/v1/jobs", cookies=mine, json={}, headers={"X-Twofold-CSRF": "1"})
    assert with_header.status_code == 422  # past authentication, refused by validation
    bearer_only = httpx.post(f"{url}/v1/jobs", headers=bearer(dash_server), json={})
    assert bearer_only.status_code == 422  # Bearer clients need no extra header

    cross_site = httpx.post(
        f"{url}/dashboard/login",
        data={"api_key": dash_server.api_key},
        headers={"Origin": "https://evil.test"},
    )
    assert cross_site.status_code == 403 and "set-cookie" not in cross_site.headers
    # No open redirect after sign-in, and nothing outside the static directory is served.
    login = httpx.get(f"{url}/dashboard/login", params={"next": "https://evil.test/x"})
    assert 'name="next" value="/dashboard/"' in login.text
    assert httpx.get(f"{url}/dashboard/static/..%2Frouter.py").status_code == 404
    assert httpx.get(f"{url}/dashboard/static/job.js").headers["content-type"].startswith("text/javascript")
    html_page = httpx.get(f"{url}/dashboard/jobs", cookies=mine)
    assert html_page.status_code == 200
    assert "script-src 'self'" in html_page.headers["content-security-policy"]


def test_jobs_list_shows_the_finished_smoke_job(
    page: Any, dash_server: ApiServer, smoke_job: dict[str, Any], signed_in: SignIn
) -> None:
    signed_in(page)
    row = page.locator(f"#jobs-table tr[data-job-id='{smoke_job['id']}']")
    row.wait_for()
    assert row.locator(".status .word").inner_text() == "succeeded"
    assert row.locator(".job a").inner_text() == smoke_job["id"][:8]
    assert "preset smoke" in row.locator(".job").inner_text() and "suite=dashboard" in row.inner_text()
    assert row.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    assert row.locator(".teacher").inner_text() == "arith-teacher"
    assert row.locator(".student").inner_text() == "tiny-student"
    assert row.locator(".dataset").inner_text() == "arithmetic"
    assert re.fullmatch(r"\d+ (s|min \d\d s)", row.locator(".duration").inner_text())

    page.select_option("#status-filter", "failed")
    row.wait_for(state="detached")
    assert "status=failed" in page.url
    page.select_option("#status-filter", "succeeded")
    row.wait_for()


def test_job_page_shows_every_stage_the_charts_and_the_statistics(
    page: Any, dash_server: ApiServer, smoke_job: dict[str, Any], signed_in: SignIn
) -> None:
    job_id = smoke_job["id"]
    labels = api_get(dash_server, f"/v1/jobs/{job_id}/reward-labels?limit=1")["summary"]
    evaluations = api_get(dash_server, f"/v1/jobs/{job_id}/evaluations")["data"]
    checkpoints = api_get(dash_server, f"/v1/jobs/{job_id}/checkpoints")["data"]
    usage = next(s for s in smoke_job["stages"] if s["name"] == "teacher_sampling")["metrics"]["usage"]
    signed_in(page)
    page.click(f"#jobs-table tr[data-job-id='{job_id}'] .job a")
    page.wait_for_selector("#evaluation-chart svg[data-chart=evaluation]")
    page.wait_for_selector("#events-card[data-stream^='(complete']")

    assert page.inner_text("#job-id") == job_id
    stages = page.locator("#stages li")
    assert [stages.nth(i).get_attribute("data-stage") for i in range(stages.count())] == STAGES
    for i in range(len(STAGES)):
        assert stages.nth(i).get_attribute("data-status") == "succeeded"
        assert "succeeded" in stages.nth(i).inner_text() and "took" in stages.nth(i).inner_text()

    # Evaluation: one bar and one whisker per model, the table as the API says.
    chart = page.locator("svg[data-chart=evaluation]")
    models = [chart.locator("rect.bar").nth(i).get_attribute("data-model") for i in range(3)]
    assert models == ["teacher", "SFT student", "RL student"]
    assert chart.locator("g.whisker").count() == len(evaluations) == 3
    for ev in evaluations:
        cells = page.locator(f"#evaluation-table tbody tr[data-model='{ev['model']}'] td").all_inner_texts()
        assert shows_pct(cells[2], ev["accuracy"]), (cells, ev)
        low, high = cells[3].split(" – ")
        assert shows_pct(low, ev["ci95"][0]) and shows_pct(high, ev["ci95"][1]), (cells, ev)
        assert cells[4] == str(ev["n"])

    # Pseudo-labels: the agreement histogram has the API's bins and counts.
    hist = page.locator("svg[data-chart=agreement] rect.bar")
    assert [int(hist.nth(i).get_attribute("data-count")) for i in range(hist.count())] == [
        b["count"] for b in labels["agreement_histogram"]
    ]
    kept = stat(page, "#label-stats", "questions kept")
    assert kept == f"{labels['questions_kept']} of {labels['questions_total']}"
    gold = stat(page, "#label-stats", "accuracy vs gold")
    assert (
        gold == "no gold"
        if labels["accuracy_vs_gold"] is None
        else shows_pct(gold, labels["accuracy_vs_gold"])
    )
    assert f"positive {labels['positive']}" in page.inner_text("#label-balance")

    # Teacher sampling and reward model.
    assert stat(page, "#teacher-stats", "requests") == f"{usage['requests']:,}"
    assert stat(page, "#teacher-stats", "completion tokens") == f"{usage['completion_tokens']:,}"
    assert stat(page, "#teacher-stats", "retries") == f"{usage['retries']:,}"
    rm = next(s for s in smoke_job["stages"] if s["name"] == "reward_model")["metrics"]
    assert shows_pct(stat(page, "#reward-stats", "held-out accuracy"), rm["accuracy"])

    # Training curves have points.
    for name in ["sft-loss", "rm-loss", "rm-accuracy", "rl-reward", "rl-kl", "rl-value-loss"]:
        points = page.locator(f"svg[data-chart={name}]").get_attribute("data-points")
        assert points is not None and int(points) > 0, name

    # Checkpoints download with the cookie.
    links = page.locator("#checkpoints-table a.download")
    assert links.count() == len(checkpoints) == 3
    download = page.request.get(f"{dash_server.url}{links.first.get_attribute('href')}")
    assert download.status == 200 and download.headers["content-type"] == "application/gzip"
    assert download.body()[:2] == b"\x1f\x8b"

    # Live log and buttons.
    assert page.locator("#events tr[data-type='job.succeeded']").count() == 1
    assert page.locator("#events tr[data-type='stage.succeeded']").count() == len(STAGES)
    assert page.is_disabled("#cancel-button") and page.is_disabled("#retry-button")


def test_cancel_button_cancels_a_running_job(
    page: Any, dash_server: ApiServer, smoke_job: dict[str, Any], signed_in: SignIn
) -> None:
    r = httpx.post(
        f"{dash_server.url}/v1/jobs",
        headers=bearer(dash_server),
        json={"preset": "smoke", "metadata": {"t": "c"}},
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    signed_in(page)
    page.goto(f"{dash_server.url}/dashboard/jobs/{job_id}")
    page.wait_for_selector("#job-status [data-status=running]", timeout=120_000)
    assert page.is_enabled("#cancel-button") and page.is_disabled("#retry-button")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-button")
    page.wait_for_selector("#job-status [data-status=cancelled]", timeout=120_000)

    job = api_get(dash_server, f"/v1/jobs/{job_id}")
    assert job["status"] == "cancelled" and job["cancel_requested"]
    assert job["stages"][0]["started_at"] is not None  # it was running when cancelled
    assert page.is_disabled("#cancel-button")
    assert page.locator("#stages li[data-status=cancelled]").count() >= 1

    # Retry is offered now, and resumes the job; stop it again so the runner is free for what follows.
    page.click("#retry-button:not([disabled])")
    page.wait_for_selector("#job-status :is([data-status=pending], [data-status=running])")
    assert api_get(dash_server, f"/v1/jobs/{job_id}")["status"] in ("pending", "running")
    assert page.is_enabled("#cancel-button") and page.is_disabled("#retry-button")
    httpx.post(f"{dash_server.url}/v1/jobs/{job_id}/cancel", headers=bearer(dash_server))
    wait_for_job(dash_server, job_id, lambda j: j["finished_at"] is not None, 120)


def test_new_job_form_uploads_a_dataset_and_submits_a_job(
    page: Any, dash_server: ApiServer, smoke_job: dict[str, Any], signed_in: SignIn, tmp_path: Path
) -> None:
    signed_in(page)
    page.click("header nav a[href='/dashboard/new']")
    page.wait_for_selector("#preset option[value=smoke]", state="attached")
    assert "64 arithmetic questions" in page.inner_text("#preset-description")

    # Upload: a bad line is named exactly as the API names it; a good file is then selected.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"answer": "3"}\n')
    page.set_input_files("#upload-file", str(bad))
    page.click("#upload-button")
    page.wait_for_selector("#upload-errors:not([hidden])")
    assert page.get_attribute("#upload-errors", "data-param") == "line 2"
    assert "exactly one of `question`" in page.inner_text("#upload-errors")
    good = tmp_path / "sums.jsonl"
    good.write_text(
        "".join(json.dumps({"question": f"{i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(5))
    )
    page.set_input_files("#upload-file", str(good))
    page.fill("#upload-name", "sums")
    page.click("#upload-button")
    page.wait_for_selector("#upload-result:not([hidden])")
    assert "5 rows" in page.inner_text("#upload-result")
    dataset_id = page.input_value("#dataset")
    assert api_get(dash_server, f"/v1/datasets/{dataset_id}")["name"] == "sums"

    # A YAML spec with a bad field: the page shows the API's message and field.
    spec = api_get(dash_server, "/v1/presets")["data"][0]["spec"]
    spec["rl"]["batch_size"] = 0
    expected = httpx.post(f"{dash_server.url}/v1/jobs", headers=bearer(dash_server), json={"spec": spec})
    assert expected.status_code == 422
    page.check("input[name=mode][value=spec]")
    page.fill("#spec", yaml.safe_dump(spec))
    page.select_option("#dataset", "")
    page.click("#submit-job")
    page.wait_for_selector("#job-errors:not([hidden])")
    assert (
        page.get_attribute("#job-errors", "data-param")
        == expected.json()["error"]["param"]
        == "rl.batch_size"
    )
    assert expected.json()["error"]["message"] in page.inner_text("#job-errors")
    page.fill("#spec", "teacher: {model: [unclosed\n")
    page.click("#submit-job")
    page.wait_for_selector("#job-errors[data-param^='spec line']")

    # The preset on the uploaded dataset, with metadata: the page goes to the new job.
    jobs_before = {j["id"] for j in api_get(dash_server, "/v1/jobs?limit=100")["data"]}
    page.check("input[name=mode][value=preset]")
    page.select_option("#preset", "smoke")
    page.select_option("#dataset", dataset_id)
    page.fill("#metadata", "source=form\nowner = dashboard test")
    page.click("#submit-job")
    page.wait_for_url(re.compile(r".*/dashboard/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[-1]
    assert job_id not in jobs_before
    job = api_get(dash_server, f"/v1/jobs/{job_id}")
    assert job["preset"] == "smoke" and job["dataset"] == dataset_id
    assert job["metadata"] == {"source": "form", "owner": "dashboard test"}
    page.wait_for_selector("#stages li[data-stage=teacher_sampling]")
    # Stop it: the screenshots that follow need the runner idle, not busy with this job.
    httpx.post(f"{dash_server.url}/v1/jobs/{job_id}/cancel", headers=bearer(dash_server))
    wait_for_job(dash_server, job_id, lambda j: j["finished_at"] is not None, 120)


def test_pages_fit_laptop_and_wide_screens_and_save_the_screenshots(
    browser: Any, dash_server: ApiServer, smoke_job: dict[str, Any], signed_in: SignIn, tmp_path: Path
) -> None:
    # docs/img is rewritten only on request, so that a test run leaves the working tree as it was.
    img_dir = IMG_DIR if os.environ.get("TWOFOLD_UPDATE_SCREENSHOTS") == "1" else tmp_path
    img_dir.mkdir(parents=True, exist_ok=True)
    for viewport in (WIDE, LAPTOP):  # laptop last: its shots are the ones kept
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(20_000)
        page = signed_in(context.new_page())
        page.wait_for_selector(f"#jobs-table tr[data-job-id='{smoke_job['id']}']")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        words = page.locator("#jobs-table .badge .word").all_inner_texts()
        assert set(words) <= {"pending", "running", "succeeded", "failed", "cancelled"} and words
        page.screenshot(path=str(img_dir / "jobs.png"))

        page.goto(f"{dash_server.url}/dashboard/jobs/{smoke_job['id']}")
        page.wait_for_selector("svg[data-chart=evaluation]")
        page.wait_for_selector("#events-card[data-stream^='(complete']")
        page.wait_for_selector("svg[data-chart=rl-value-loss]")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        for card in ("#stages-card", "#labels-card", "#curves-card", "#evaluation-card", "#checkpoints-card"):
            box = page.locator(card).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], card
        page.screenshot(path=str(img_dir / "job.png"), full_page=True)
        context.close()
    assert (img_dir / "jobs.png").stat().st_size > 10_000 and (img_dir / "job.png").stat().st_size > 50_000
