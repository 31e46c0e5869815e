"""The web inspector: read-only pages over one ThreadService (docs/web.md).

Routes (every one behind the same Host/Origin and token guards as ``/mcp``):

=====================================  =================================================
``GET /``                              threads, newest first; ``status``/``agent``/``parent`` filters, ``cursor`` pages
``POST /search``                       the search box (``search_threads``); the words travel in the body
``GET /t/{id}``                        a thread: manifest, chain, children, verify badge, first events (``?at=end``: the latest)
``GET /t/{id}/events?after=N``         the next timeline fragment (scrolling; ``before=N``: the earlier one)
``GET /t/{id}/verify``                 the verify badge (fragment)
``GET /t/{id}/live?after=N``           Server-Sent Events: new events, status, handoff hop
``GET /live/threads?ids=a,b&parent=p``  Server-Sent Events: rows of the listed threads (and of p's children)
``GET /t/{id}/export/{name}``          ``thread.md``, ``chain.md``, ``bundle.jsonl``, ``transcript.jsonl``
``GET|POST /login``, ``POST /logout``  the token form and its HttpOnly cookie
``GET /static/...``                    the page's CSS and JavaScript (shipped in the package)
=====================================  =================================================

No page changes data. Transcript text is escaped everywhere (Jinja2 autoescape, Markdown
without raw HTML) and every response carries a strict Content-Security-Policy.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import Settings
from ..errors import InvalidInputError, NotFoundError
from ..http_guard import cookie_name
from ..models import THREAD_ID_RE, Thread, check_thread_id
from ..service import MAX_LIST, ThreadService
from ..tokens import TokenTable
from . import live, timeline
from .render import LIVE_STATUSES, make_env

log = logging.getLogger("threadloom.web")

STATIC = Path(__file__).parent / "static"
STATIC_CACHE = b"private, max-age=86400"
PAGE_SIZE = 50
CHILDREN_SHOWN = 50
SEARCH_LIMIT = 20
MAX_QUERY = 500
MAX_LIVE_IDS = MAX_LIST
COOKIE_MAX_AGE = 30 * 86400
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make form posts send Origin: null
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
EXPORTS = {
    "thread.md": "text/markdown; charset=utf-8",
    "chain.md": "text/markdown; charset=utf-8",
    "bundle.jsonl": "application/x-ndjson; charset=utf-8",
    "transcript.jsonl": "application/x-ndjson; charset=utf-8",
}


class SecurityHeaders:
    """Adds the CSP and friends to every response; pages and fragments are never cached."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    # assets are named by the package version (?v=): cached without revalidating
                    extra.append((b"cache-control", STATIC_CACHE if static else b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


class Inspector:
    """The handlers; each one reads through the service and renders a template."""

    def __init__(self, service: ThreadService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.env = make_env()
        grants = settings.grants()
        self.tokens = TokenTable(grants) if grants else None

    # ----------------------------------------------------------------- helpers

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("auth", self.tokens is not None)
        return HTMLResponse(self.env.get_template(name).render(**context), status_code=status)

    def error(self, status: int, title: str, message: str) -> HTMLResponse:
        return self.page("error.html", status, title=title, message=message)

    def macro(self, template: str, name: str) -> Any:
        return getattr(self.env.get_template(template).module, name)

    async def _thread(self, thread_id: str) -> Thread:
        try:
            return await self.service.get_thread(check_thread_id(thread_id))
        except (NotFoundError, InvalidInputError) as exc:
            raise HTTPException(404, exc.message) from exc

    def render_events(self, events: list[dict[str, Any]]) -> str:
        return str(self.macro("_timeline.html", "items")(timeline.pair(events)))

    def render_row(self, thread: Thread) -> str:
        return str(self.macro("_rows.html", "row")(thread))

    @staticmethod
    def thread_info(thread: Thread) -> dict[str, Any]:
        return {
            "thread_id": thread.thread_id,
            "status": thread.status.value,
            "status_reason": thread.status_reason,
            "event_count": thread.event_count,
            "context": round(thread.context().ratio, 4),
            "cost": thread.cost,
            "continuation_thread_id": thread.continuation_thread_id,
        }

    # ------------------------------------------------------------------- pages

    async def threads(self, request: Request) -> Response:
        q = request.query_params
        filters = {
            "status": q.get("status") or None,
            "agent": (q.get("agent") or "").strip() or None,
            "parent": (q.get("parent") or "").strip() or None,
        }
        cursor = q.get("cursor") or None
        try:
            page = await self.service.list_threads(
                agent_id=filters["agent"],
                parent_id=filters["parent"],
                status=filters["status"],
                limit=PAGE_SIZE,
                cursor=cursor,
            )
        except InvalidInputError as exc:
            return self.page(
                "threads.html", 400, threads=[], filters=filters, problem=f"[{exc.rule}] {exc.message}"
            )
        next_url = None
        if page.next_cursor:
            params = {k: v for k, v in filters.items() if v} | {"cursor": page.next_cursor}
            next_url = "/?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return self.page(
            "threads.html",
            threads=page.threads,
            filters=filters,
            next_url=next_url,
            paged=cursor is not None,
            live_ids=[t.thread_id for t in page.threads if t.status in LIVE_STATUSES],
        )

    async def search(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        query = (form.get("q") or [""])[0].strip()
        agent = (form.get("agent") or [""])[0].strip() or None
        filters = {"status": None, "agent": agent, "parent": None}
        if not query:
            return RedirectResponse("/", status_code=303)
        try:
            found = await self.service.search_threads(
                query[:MAX_QUERY], agent_id=agent, limit=SEARCH_LIMIT, context=0
            )
        except InvalidInputError as exc:
            return self.page(
                "threads.html",
                400,
                threads=[],
                filters=filters,
                query=query,
                problem=f"[{exc.rule}] {exc.message}",
            )
        return self.page("threads.html", threads=[], filters=filters, query=query, results=found.results)

    async def thread(self, request: Request) -> Response:
        thread = await self._thread(request.path_params["thread_id"])
        tid = thread.thread_id
        chain = await self.service.get_chain(tid)
        kids = await self.service.list_threads(parent_id=tid, limit=CHILDREN_SHOWN)
        parent = None
        if thread.parent_id:
            try:
                parent = await self.service.get_thread(thread.parent_id)
            except NotFoundError:
                parent = None
        at_end = request.query_params.get("at") == "end" and thread.event_count > timeline.FIRST_PAGE
        start = thread.event_count - timeline.FIRST_PAGE if at_end else 0
        first = await timeline.read_page(self.service, tid, after_seq=start, limit=timeline.FIRST_PAGE)
        links = chain.threads
        at = next((i for i, link in enumerate(links) if link.thread_id == tid), None)
        prev_link = links[at - 1] if at else None
        next_link = links[at + 1] if at is not None and at + 1 < len(links) else None
        forks = self._forks(chain)
        return self.page(
            "thread.html",
            thread=thread,
            chain=chain,
            prev_link=prev_link,
            next_link=next_link,
            children=kids.threads,
            more_children=kids.next_cursor is not None,
            parent=parent,
            forks=forks,
            page=first,
            live=thread.continuation_thread_id is None,
            live_ids=[t.thread_id for t in kids.threads if t.status in LIVE_STATUSES],
        )

    @staticmethod
    def _forks(chain: Any) -> list[Any]:
        """Forks made of the chain's threads, when this build records them (fork_thread)."""
        return list(getattr(chain, "forks", None) or [])

    async def events(self, request: Request) -> Response:
        thread = await self._thread(request.path_params["thread_id"])
        before = request.query_params.get("before")
        if before is not None:
            page = await timeline.read_before(
                self.service, thread.thread_id, before_seq=max(1, _int(before, 1)), limit=timeline.NEXT_PAGE
            )
        else:
            page = await timeline.read_page(
                self.service,
                thread.thread_id,
                after_seq=_int(request.query_params.get("after"), 0),
                limit=timeline.NEXT_PAGE,
            )
        html = str(self.macro("_timeline.html", "items")(page.items))
        return HTMLResponse(
            html,
            headers={
                "x-first-seq": str(page.first_seq),
                "x-last-seq": str(page.last_seq),
                "x-has-more": "1" if page.has_more else "0",
            },
        )

    async def verify(self, request: Request) -> Response:
        thread = await self._thread(request.path_params["thread_id"])
        report = await self.service.verify_thread(thread.thread_id)
        return HTMLResponse(str(self.macro("_verify.html", "badge")(report)))

    async def thread_live(self, request: Request) -> Any:
        thread = await self._thread(request.path_params["thread_id"])
        after = _int(request.query_params.get("after"), thread.event_count)
        return live.SSEResponse(
            live.thread_stream(self.service, thread.thread_id, after, self.render_events, self.thread_info)
        )

    async def rows_live(self, request: Request) -> Any:
        raw = request.query_params.get("ids") or ""
        ids = [i for i in dict.fromkeys(raw.split(",")) if THREAD_ID_RE.fullmatch(i)][:MAX_LIVE_IDS]
        parent = request.query_params.get("parent")
        if parent is not None and not THREAD_ID_RE.fullmatch(parent):
            raise HTTPException(400, "parent must be a thread id (12 hex digits)")
        if not ids and parent is None:
            raise HTTPException(400, "ids must name 1 to 200 thread ids (12 hex digits), comma-separated")
        return live.SSEResponse(live.rows_stream(self.service, ids, self.render_row, parent))

    async def export(self, request: Request) -> Response:
        thread = await self._thread(request.path_params["thread_id"])
        name = request.path_params["name"]
        if name not in EXPORTS:
            raise HTTPException(404, f"no export {name!r:.80}; there are {', '.join(EXPORTS)}")
        tid = thread.thread_id
        if name == "thread.md":
            from ..transcript_md import thread_markdown

            body, filename = await thread_markdown(self.service, tid), f"thread-{tid}.md"
        elif name == "chain.md":
            from ..transcript_md import chain_markdown

            body, filename = await chain_markdown(self.service, tid), f"chain-{thread.chain_root_id}.md"
        elif name == "bundle.jsonl":
            from ..bundle import collect_chains, export_bundle

            buf = io.StringIO()
            await export_bundle(self.service, await collect_chains(self.service, [tid]), buf)
            body, filename = buf.getvalue(), f"chain-{thread.chain_root_id}.jsonl"
        else:
            body, filename = await self.service.transcript(tid), f"transcript-{tid}.jsonl"
        return Response(
            body,
            media_type=EXPORTS[name],
            headers={"content-disposition": f'attachment; filename="{filename}"'},
        )

    # ------------------------------------------------------------------- login

    async def login_form(self, request: Request) -> Response:
        if self.tokens is None:
            return RedirectResponse("/", status_code=303)
        return self.page("login.html", next=_safe_next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        target = _safe_next((form.get("next") or [""])[0])
        if self.tokens is None:
            return RedirectResponse(target, status_code=303)
        token = (form.get("token") or [""])[0].strip()
        if not token or self.tokens.lookup(f"Bearer {token}".encode()) is None:
            return self.page(
                "login.html", 401, next=target, problem="That is not a token this server accepts."
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            cookie_name(request.scope),
            quote(token, safe=""),
            max_age=COOKIE_MAX_AGE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login" if self.tokens is not None else "/", status_code=303)
        response.delete_cookie(cookie_name(request.scope), path="/", httponly=True, samesite="strict")
        return response


def _int(value: str | None, default: int) -> int:
    try:
        return max(0, int(value)) if value is not None else default
    except ValueError:
        return default


def _safe_next(value: str | None) -> str:
    """A same-site path to return to after the token form (anything else: the threads page)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value.split("?", 1)[0]


def build_web_app(service: ThreadService, settings: Settings) -> Any:
    """The inspector as an ASGI app (put it behind http.guard_app, as build_http_app does)."""
    ins = Inspector(service, settings)

    async def not_found(request: Request, exc: Exception) -> Response:
        detail = getattr(exc, "detail", "") or "There is nothing at this address."
        status = getattr(exc, "status_code", 404)
        return ins.error(status, "Not found" if status == 404 else "Bad request", str(detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("web inspector: %s %s failed", request.method, request.url.path, exc_info=exc)
        return ins.error(
            500, "Something went wrong", "The server could not show this page; its log says why."
        )

    routes = [
        Route("/", ins.threads, methods=["GET"]),
        Route("/search", ins.search, methods=["POST"]),
        Route("/t/{thread_id}", ins.thread, methods=["GET"]),
        Route("/t/{thread_id}/events", ins.events, methods=["GET"]),
        Route("/t/{thread_id}/verify", ins.verify, methods=["GET"]),
        Route("/t/{thread_id}/live", ins.thread_live, methods=["GET"]),
        Route("/t/{thread_id}/export/{name}", ins.export, methods=["GET"]),
        Route("/live/threads", ins.rows_live, methods=["GET"]),
        Route("/login", ins.login_form, methods=["GET"]),
        Route("/login", ins.login, methods=["POST"]),
        Route("/logout", ins.logout, methods=["POST"]),
        Route("/favicon.ico", lambda request: RedirectResponse("/static/favicon.svg", status_code=301)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: not_found, 404: not_found, 500: server_error},
    )
    return SecurityHeaders(app)
