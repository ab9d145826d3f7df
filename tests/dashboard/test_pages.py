"""The dashboard's HTML, from the real app in-process: every value a page shows (tenant name, job id from the URL,
the sign-in form's ``next`` and error) is HTML-escaped by the templates, pages carry the security headers, and
sign-in never redirects off the dashboard. The browser tests (test_dashboard.py) drive the same pages."""

from __future__ import annotations

from urllib.parse import quote

import jinja2
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from twofold.api.dashboard.router import SECURITY_HEADERS, render

DashApp = tuple[TestClient, str]
ATTACK = '"><img src=x onerror=alert(1)>'
ESCAPED = "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"


def sign_in(client: TestClient, key: str) -> None:
    r = client.post(
        "/dashboard/login", data={"api_key": key, "next": "/dashboard/new"}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/new", r.text


@pytest.mark.services
def test_pages_escape_the_tenant_name_and_the_job_id(dash_app: DashApp) -> None:
    client, key = dash_app
    sign_in(client, key)

    jobs = client.get("/dashboard/jobs")
    assert jobs.status_code == 200
    assert "<strong>&lt;b id=&#34;x&#34;&gt;acme &amp; co&lt;/b&gt;</strong>" in jobs.text
    assert '<b id="x">' not in jobs.text
    assert '<a href="/dashboard/" aria-current="page">Jobs</a>' in jobs.text
    assert '<script type="module" src="/dashboard/static/jobs.js"></script>' in jobs.text
    assert {k: jobs.headers[k] for k in SECURITY_HEADERS} == SECURITY_HEADERS

    new = client.get("/dashboard/new")
    assert '<a href="/dashboard/new" aria-current="page">New job</a>' in new.text

    job = client.get(f"/dashboard/jobs/{quote(ATTACK, safe='')}")
    assert job.status_code == 200
    assert f'<main data-job-id="{ESCAPED}">' in job.text
    assert "<img" not in job.text


@pytest.mark.services
def test_the_sign_in_form_escapes_next_and_stays_on_the_dashboard(dash_app: DashApp) -> None:
    client, _ = dash_app
    page = client.get("/dashboard/login", params={"next": f"/dashboard/jobs?q={ATTACK}"})
    assert f'name="next" value="/dashboard/jobs?q={ESCAPED}"' in page.text
    assert "<img" not in page.text and "login-error" not in page.text  # no error before a try
    assert page.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]

    for target in ("https://evil.test/x", "//evil.test", "/dashboard\\..\\x"):
        assert (
            'name="next" value="/dashboard/"' in client.get("/dashboard/login", params={"next": target}).text
        )

    wrong = client.post("/dashboard/login", data={"api_key": "tf_wrong", "next": f"/dashboard/{ATTACK}"})
    assert wrong.status_code == 401
    assert (
        '<p class="alert" role="alert" id="login-error">That API key is invalid or revoked.</p>' in wrong.text
    )
    assert f'value="/dashboard/{ESCAPED}"' in wrong.text and "<img" not in wrong.text


def test_a_value_a_template_needs_but_is_not_given_is_an_error() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""})
    with pytest.raises(jinja2.UndefinedError, match="next"):
        render(request, "login.html", title="Sign in", error="")
    page = render(request, "login.html", title="Sign in", error="<b>", next="/dashboard/")
    assert "&lt;b&gt;" in page.body.decode() and page.status_code == 200
