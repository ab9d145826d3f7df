"""The internal web dashboard at ``/dashboard``: sign-in with an API key (kept in an HttpOnly cookie), and the
jobs, job and new-job pages.

The pages are static shells, rendered from ``templates/`` by Jinja2 with autoescaping (every value put into a
page is HTML-escaped); their scripts (``static/*.js``, no build step, no third-party code) read the same ``/v1``
API as every other client, authenticated by the cookie (``api.deps.current_principal``), so the dashboard sees
exactly what the key's tenant sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Body, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.orm import Session

from twofold.api.deps import DASHBOARD_COOKIE, CurrentTenant, SessionDep, get_session
from twofold.api.errors import Forbidden, NotFound, ValidationFailed
from twofold.core.yaml_spec import MAX_SPEC_CHARS, SpecSyntaxError, load_spec
from twofold.store.keys import find_key
from twofold.store.models import Tenant

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
PREFIX = "/dashboard"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
# Only our own scripts and styles run: no inline script, nothing from another origin, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

router = APIRouter(prefix=PREFIX, include_in_schema=False)
# Every page extends layout.html; a variable a template names but the route does not give is an error.
templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
)


def render(
    request: Request,
    template: str,
    *,
    title: str,
    tenant: str | None = None,
    active: str = "",
    script: str | None = None,
    data: dict[str, str] | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page ``template`` inside the layout, with the security headers. ``tenant`` (signed in) shows the
    navigation with ``active`` marked; ``script`` is the page's module in ``static/``; ``data`` becomes
    ``data-*`` attributes of ``<main>``, where that script reads it."""
    attrs = {key.replace("_", "-"): value for key, value in (data or {}).items()}
    return templates.TemplateResponse(
        request,
        template,
        {
            "prefix": PREFIX,
            "title": title,
            "tenant": tenant,
            "active": active,
            "script": script,
            "data": attrs,
            **context,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )


def _signed_in(request: Request, session: Session) -> str | None:
    """The tenant name behind the sign-in cookie, or None when there is no valid one."""
    token = request.cookies.get(DASHBOARD_COOKIE)
    row = find_key(session, token) if token else None
    if row is None:
        return None
    tenant = session.get(Tenant, row.tenant_id)
    return tenant.name if tenant is not None else None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: only a dashboard path of this site (no open redirect)."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value:
        parts = urlsplit(value)
        if not parts.scheme and not parts.netloc:
            return value
    return f"{PREFIX}/"


def _require_same_origin(request: Request) -> None:
    """Refuse a form POST sent by another site (browsers always send ``Origin`` on cross-site POSTs)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin != expected:
        raise Forbidden(f"cross-site request refused (Origin {origin!r} is not {expected!r})", param="Origin")


def _shell(
    request: Request, session: Session, *, active: str, title: str, body: str, script: str, **data: str
) -> Response:
    tenant = _signed_in(request, session)
    if tenant is None:
        return _to_login(request)
    return render(request, body, title=title, tenant=tenant, active=active, script=script, data=data)


@router.get("")
@router.get("/")
@router.get("/jobs")
def jobs_page(request: Request, session: SessionDep) -> Response:
    """The jobs list."""
    return _shell(request, session, active="jobs", title="Jobs", body="jobs.html", script="jobs.js")


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, session: SessionDep) -> Response:
    """One job: stages, events, labels, curves, scores and checkpoints (the script loads the job, so an
    unknown id shows the API's 404 message)."""
    return _shell(
        request, session, active="jobs", title="Job", body="job.html", script="job.js", job_id=job_id
    )


@router.get("/new")
def new_job_page(request: Request, session: SessionDep) -> Response:
    """Upload a dataset and submit a job."""
    return _shell(request, session, active="new", title="New job", body="new.html", script="new.js")


def _login_page(request: Request, *, next_path: str, error: str = "", status_code: int = 200) -> HTMLResponse:
    return render(
        request, "login.html", title="Sign in", status_code=status_code, next=next_path, error=error
    )


@router.get("/login")
def login_page(request: Request, session: SessionDep, next: str | None = None) -> Response:
    """The sign-in form (straight to the dashboard when the cookie is already valid)."""
    if _signed_in(request, session) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, next_path=_safe_next(next))


@router.post("/login")
def login(
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    api_key: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Check the pasted API key and keep it in an HttpOnly, SameSite=Strict cookie (Secure over https)."""
    _require_same_origin(request)
    token = api_key.strip()
    if not token or find_key(session, token) is None:
        return _login_page(
            request,
            next_path=_safe_next(next),
            error="That API key is invalid or revoked." if token else "Paste an API key.",
            status_code=401,
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        DASHBOARD_COOKIE,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path="/",  # the /v1 API and /dashboard both read it
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Forget the cookie and go back to the sign-in page."""
    _require_same_origin(request)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(
        DASHBOARD_COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


@router.post("/spec")
def parse_spec(
    who: CurrentTenant, text: Annotated[str, Body(embed=True, max_length=MAX_SPEC_CHARS)]
) -> dict[str, Any]:
    """Turn the new-job page's spec text (YAML or JSON) into a JSON object, so the page can submit it to
    ``POST /v1/jobs``; errors name the line (``param: "spec line N"``)."""
    del who  # authentication only
    try:
        spec = load_spec(text)
    except SpecSyntaxError as exc:
        where = f"spec line {exc.line}" if exc.line is not None else "spec"
        raise ValidationFailed(f"the spec cannot be read: {exc.message}", param=where) from None
    return {"spec": spec}


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    """A script or stylesheet of the dashboard (flat directory; nothing outside it)."""
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in _STATIC_TYPES or not path.is_file():
        raise NotFound(f"no dashboard file {name!r}")
    return FileResponse(
        path,
        media_type=_STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
