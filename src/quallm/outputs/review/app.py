"""The review web app (Starlette): one page, its static files, and the JSON API under ``/api/``.

Safe by default. Every route, pages and API alike, needs the session token: from the printed URL
(``?token=``, which sets an HttpOnly, SameSite=Strict cookie and redirects to a URL without it), the
cookie, or ``Authorization: Bearer TOKEN`` for scripts. The Host header must name this server (DNS
rebinding). A POST must be JSON, must not come from another site (``Origin``, ``Sec-Fetch-Site``) and,
when authenticated by the cookie, must carry the CSRF value of the page in ``X-Quallm-CSRF``. Every
response has ``Referrer-Policy: no-referrer`` and a Content-Security-Policy without ``unsafe-inline``;
the page builds every piece of transcript text with ``textContent``, never as HTML.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quallm.outputs.review.session import DecisionRefused, ReviewSession, StatusFilter

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "referrer-policy": "no-referrer",
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
CSRF_HEADER = "x-quallm-csrf"


def csrf_value(token: str) -> str:
    """The CSRF value the page sends with each POST: derived from the token, so it needs no storage."""
    return hmac.new(token.encode(), b"quallm-review-csrf", hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: Host check, token, cross-site POST refusal, security headers on every response."""

    def __init__(self, app: ASGIApp, token: str, hosts: Collection[str], cookie: str) -> None:
        self.app = app
        self.token = token
        self.hosts = {h.lower() for h in hosts}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.cookie = cookie
        self.csrf = csrf_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        refusal = self.check(Request(scope))
        if isinstance(refusal, Response):
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def _same(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def check(self, request: Request) -> Response | None:
        """A refusal, a redirect that sets the cookie, or None to let the request through."""
        host = request.headers.get("host", "").lower()
        if host not in self.hosts:
            return _error(400, f"Host {host!r} is not this review server")
        bearer = request.headers.get("authorization", "")
        by_bearer = bearer.startswith("Bearer ") and self._same(bearer[7:].strip())
        by_cookie = self._same(request.cookies.get(self.cookie))
        by_query = self._same(request.query_params.get("token"))
        if not (by_bearer or by_cookie or by_query):
            return _error(403, "a valid token is needed: open the URL 'quallm review' printed")
        if request.method in ("GET", "HEAD"):
            if by_query and not request.url.path.startswith("/api/"):
                # Put the token in a cookie and drop it from the address bar (and from history).
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                resp = RedirectResponse(target, status_code=303)
                resp.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
                return resp
            return None
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return _error(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return _error(403, f"cross-site request refused (Origin: {origin})")
        if not by_bearer and not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(),
                                                     self.csrf.encode()):
            return _error(403, f"the {CSRF_HEADER} header is missing or wrong")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "POST a JSON body (Content-Type: application/json)")
        return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(session: ReviewSession, token: str, hosts: Collection[str], cookie: str = "quallm_review") -> ASGIApp:
    """The review app for ``session``, guarded by ``token`` and answering only for ``hosts`` (``host:port``)."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    page = env.get_template("review.html.j2")
    csrf = csrf_value(token)

    async def index(request: Request) -> Response:
        return HTMLResponse(page.render(csrf=csrf, reviewer=session.reviewer, run=session.run.path.name))

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def api_session(request: Request) -> Response:
        return JSONResponse(session.summary())

    async def api_items(request: Request) -> Response:
        q = request.query_params
        status = q.get("status", "all")
        if status not in ("all", "pending", "decided", "accepted", "rejected", "recoded"):
            return _error(400, f"status must be all, pending, decided, accepted, rejected or recoded, not {status!r}")
        items = session.list_items(code=q.get("code") or None, transcript=q.get("transcript") or None,
                                   status=cast(StatusFilter, status), candidates=q.get("candidates", "1") != "0")
        added = [session.added_view(d) for d in session.state.added
                 if (not q.get("transcript") or d.transcript_id == q.get("transcript"))
                 and (not q.get("code") or d.code_id == q.get("code"))]
        return JSONResponse({"items": items, "added": added, "total": len(session.items)})

    async def api_progress(request: Request) -> Response:
        return JSONResponse(session.progress())

    async def api_decide(request: Request) -> Response:
        try:
            body: Any = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        try:
            # Blocking file write + fsync: off the event loop; the answer comes only once it is on disk.
            decision = await run_in_threadpool(session.decide, body)
        except DecisionRefused as exc:
            return _error(400, str(exc))
        return JSONResponse({"saved": True, "decision": decision.model_dump(mode="json", exclude_none=True)})

    app = Starlette(routes=[
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/session", api_session),
        Route("/api/items", api_items),
        Route("/api/progress", api_progress),
        Route("/api/decisions", api_decide, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ])
    return Guard(app, token, hosts, cookie)
