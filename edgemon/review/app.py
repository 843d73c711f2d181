"""The review web app (Starlette) and its server (uvicorn).

Bound to 127.0.0.1 by default, where only this machine can reach it and the Host header is checked
(a web page elsewhere cannot reach it through DNS rebinding). Bound to any other address, every
request needs the token: from ``?token=`` once (it then lives in a same-site cookie), the cookie,
or an ``X-Review-Token`` header. Everything it serves is in this package: it works offline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import logging
import re
import secrets
import socket
import sqlite3
import threading
from urllib.parse import quote, unquote, urlencode
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from edgemon.analysis.bundle import MANIFEST, default_bundle_path
from edgemon.errors import AudioError, EdgemonError
from edgemon.review import charts, reviews
from edgemon.review.excerpt import RecordingBefore, read_excerpt
from edgemon.review.local_time import zone_name
from edgemon.review.spectrogram import spectrogram_png
from edgemon.safetext import shown
from edgemon.storage.readonly import sources_in_several_bundles
from edgemon.utc import parse_utc, utc_iso

HERE = Path(__file__).parent
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
COOKIE = "edgemon_review_token"
REVIEWER_COOKIE = "edgemon_reviewer"
MAX_REVIEWER_CHARS = 64
PAGE_SIZE = 50
MAX_VERDICT_BYTES = 64 * 1024
# Excerpts decoded at once: a page of 50 detections asks for 50 spectrograms together, and each
# decode holds up to a minute of audio at the file's rate (an AudioMoth at 384 kHz: ~100 MB of
# float32); the server's 40 worker threads would all decode at once on a Pi's 1-4 GB.
DECODES_AT_ONCE = 2
# A request waits this long for its turn, then is told the page is busy: decodes stuck on a hung
# mount would otherwise hold every later one, then every worker thread, and the page itself (a review).
DECODE_WAIT_S = 30.0
log = logging.getLogger(__name__)


class ReviewServerError(EdgemonError):
    """The review page cannot be served as asked (e.g. bound beyond this machine without a token)."""


@dataclasses.dataclass(frozen=True)
class ReviewConfig:
    """What the page serves: the database, where the audio is, who reviews, and where it listens.

    ``token`` None on a local address means no token is asked for; ``pre_s``/``post_s`` are the
    seconds of audio played around a detection."""

    db: Path
    recordings: Path | None = None
    clips: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    reviewer: str = "reviewer"   # a browser that named its reviewer (``?reviewer=``) judges under that name
    pre_s: float = 2.0
    post_s: float = 2.0
    zone: dt.tzinfo | None = None   # the recorder's time zone: days, hours and times shown in it (None: UTC)
    # Which recording a recording continues, to play a call stored with a lead from its start there
    # (``files.preroll.recording_before``, given by the command line; None: played from its own start).
    recording_before: RecordingBefore | None = None

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS


def page_offset(text: str | None) -> int:
    """``?offset=``: a whole number SQLite can hold (a huge one was a 500 and a traceback)."""
    if not text:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise reviews.ReviewError(f"offset {text!r} is not a whole number below 10^18")
    return int(text)


def page_as_of(text: str | None) -> str:
    """``?as_of=``: when the first of these pages was shown (a UTC time, as verdicts are stored),
    so that the next follows on from it (``reviews.list_detections``); now when not given."""
    if not text:
        return utc_iso(dt.datetime.now(dt.timezone.utc))
    try:
        return utc_iso(parse_utc(text))
    except (ValueError, OverflowError):
        raise reviews.ReviewError(f"as_of {text!r} is not a UTC time such as 2026-01-31T05:30:00.000Z") from None


def page_upto(text: str | None, db: Path) -> int:
    """``?upto=``: the newest detection's id when the first of these pages was shown, so that
    detections stored since do not push its rows onto the next page; the newest now when not given."""
    if not text:
        return reviews.newest_detection_id(db)
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise reviews.ReviewError(f"upto {text!r} is not a whole number below 10^18")
    return int(text)


def reviewer_name(text: str) -> str:
    """``?reviewer=``: a name to store with this browser's verdicts (trimmed, printable, at most
    ``MAX_REVIEWER_CHARS``); ReviewError otherwise."""
    name = text.strip()
    if not name or len(name) > MAX_REVIEWER_CHARS or not name.isprintable():
        raise reviews.ReviewError(f"reviewer {text[:MAX_REVIEWER_CHARS]!r} is no name: give 1 to "
                                  f"{MAX_REVIEWER_CHARS} printable characters")
    return name


def request_reviewer(request: Request, config: ReviewConfig) -> str:
    """Who judges from this browser: the name it gave (its cookie), else ``--reviewer``. One page
    served to a team on a LAN stored every verdict under the name of whoever started it, and each
    one replaced the last as that one person's (a team trial)."""
    try:
        return reviewer_name(unquote(request.cookies.get(REVIEWER_COOKIE, "")))
    except reviews.ReviewError:
        return config.reviewer


def with_token(config: ReviewConfig) -> ReviewConfig:
    """``config`` with a generated token when it binds beyond this machine without one."""
    if config.token is not None and not config.token.strip():
        raise ReviewServerError("--token is blank: give a real one, or none to have one generated")
    if config.local or config.token:
        return config
    return dataclasses.replace(config, token=secrets.token_urlsafe(18))


class TokenGate:
    """ASGI middleware: every HTTP request must carry the token (query, cookie or header)."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = (request.query_params.get("token") or request.cookies.get(COOKIE)
                 or request.headers.get("x-review-token") or "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            response = PlainTextResponse("a valid review token is required (open the URL printed by "
                                         "`edgemon review`)\n", status_code=401)
            return await response(scope, receive, send)
        if "token" in request.query_params and request.method == "GET":
            # Move the token from the URL (history, Referer) into an HttpOnly cookie.
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            # One leading slash: '//host/...' is another site's address to a browser.
            path = "/" + request.url.path.lstrip("/")
            response = RedirectResponse(path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


# Sent with every response: no other site may frame the page (a framed page took a visitor's key
# presses as verdicts: a review), load its audio or images, or run script it did not serve.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class BrowserGuard:
    """ASGI middleware: a request another site's page made (``Sec-Fetch-Site`` cross-site or
    same-site: an image, an audio element, a frame, a fetch) is refused before any work, bar a
    plain link followed to a page; and every response carries ``SECURITY_HEADERS``. Bound to
    127.0.0.1 the page has no token: any web page the reviewer visited could frame it, or load
    spectrograms and audio to learn what was detected and keep a Pi busy."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        headers = Request(scope).headers
        if headers.get("sec-fetch-site") in ("cross-site", "same-site") and not (
                scope["method"] in ("GET", "HEAD") and headers.get("sec-fetch-mode") == "navigate"
                and headers.get("sec-fetch-dest") == "document"):
            response = PlainTextResponse("refused: a request from another site's page\n", status_code=403)
            return await response(scope, receive, send_with_headers)
        return await self.app(scope, receive, send_with_headers)


def unknown_bundle(bundle: str, bundles: list[str]) -> str:
    """Why ``bundle`` names no bundle of the database's (``bundles``)."""
    return f"unknown bundle id {bundle!r}: the database holds detections of {', '.join(bundles) or 'none'}"


def unknown_filter(q, labels: list[str] | None, bundles: list[str]) -> Response | None:
    """The refusal of a filter that names nothing in the database (an empty page read as "no
    detections of it", a newcomer trial): an unknown bundle or label is a 404, a day not written
    YYYY-MM-DD a 400; None when every filter given is fine."""
    bundle, label, day = q.get("bundle") or None, q.get("label") or None, q.get("day") or None
    if bundle is not None and bundle not in bundles:
        return PlainTextResponse(f"error: {unknown_bundle(bundle, bundles)}\n", status_code=404)
    if label is not None and labels is not None and label not in labels:
        return PlainTextResponse(f"error: no detection of {label!r} here: the database holds "
                                 f"{', '.join(labels) or 'none'}\n", status_code=404)
    if day is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        return PlainTextResponse(f"error: day {day!r} is not a date written YYYY-MM-DD\n", status_code=400)
    return None


def known_labels(db: Path, db_labels: list[str]) -> list[str]:
    """Labels a detection can be relabelled to: the detected ones and those of the bundles that ran
    on the database (the embedded bundle's when none is recorded: a site's own bundle's species
    were not offered, the default's were, a review)."""
    ran = reviews.bundle_labels(db)
    if not ran:
        try:
            manifest = json.loads((default_bundle_path() / MANIFEST).read_text())
            ran = [l for l in manifest["labels"] if l != manifest.get("background_label", "background")]
        except (OSError, ValueError, KeyError):
            ran = []
    return sorted(set(db_labels) | set(ran))


def create_app(config: ReviewConfig) -> Starlette:
    """The review app for ``config``; the database is migrated (``reviews`` added) here."""
    if not config.local and not config.token:
        raise ReviewServerError(f"binding {config.host} makes the page reachable from other machines: "
                                f"it needs a token (--token)")
    if not config.reviewer.strip():   # else the page opens and every verdict is refused
        raise ReviewServerError("a verdict needs a reviewer name: give --reviewer NAME ($USER is empty)")
    reviews.open_for_review(config.db)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    decodes = threading.BoundedSemaphore(DECODES_AT_ONCE)   # the rest wait their turn in their threads
    templates.env.filters["urlencode_without"] = lambda q, *keys: urlencode(
        [(k, v) for k, v in q.multi_items() if k not in keys])
    templates.env.filters["shown"] = shown

    def index(request: Request) -> Response:
        q = request.query_params
        if "reviewer" in q:   # this browser's reviewer: kept in a cookie, the page shown without it
            if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
                return PlainTextResponse("refused: a reviewer named by another site's page\n", status_code=403)
            try:
                name = reviewer_name(q["reviewer"])
            except reviews.ReviewError as exc:
                return PlainTextResponse(f"error: {exc}\n", status_code=400)
            rest = urlencode([(k, v) for k, v in q.multi_items() if k != "reviewer"])
            response = RedirectResponse("/" + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(REVIEWER_COOKIE, quote(name), max_age=365 * 24 * 3600, httponly=True,
                                samesite="strict")
            return response
        order = q.get("order", "teach")
        days, labels, bundles = reviews.days_and_labels(config.db, config.zone)
        refused = unknown_filter(q, labels, bundles)
        if refused is not None:
            return refused
        try:
            offset, as_of = page_offset(q.get("offset")), page_as_of(q.get("as_of"))
            upto = page_upto(q.get("upto"), config.db)
            rows = reviews.list_detections(config.db, order=order, label=q.get("label") or None,
                                           day=q.get("day") or None, bundle_id=q.get("bundle") or None,
                                           unreviewed_only=q.get("unreviewed") == "1",
                                           limit=PAGE_SIZE, offset=offset, as_of=as_of, upto=upto, zone=config.zone)
        except reviews.ReviewError as exc:
            return PlainTextResponse(f"error: {exc}\n", status_code=400)
        return templates.TemplateResponse(request, "index.html", {
            "rows": rows, "days": days, "labels": labels, "bundles": bundles, "q": q, "order": order,
            "orders": reviews.ORDERS, "offset": offset, "as_of": as_of, "upto": upto, "page_size": PAGE_SIZE,
            "newer": reviews.detections_since(config.db, upto, label=q.get("label") or None, day=q.get("day") or None,
                                              bundle_id=q.get("bundle") or None, zone=config.zone)
                     if q.get("upto") else 0,
            "relabel_to": known_labels(config.db, labels),
            "precision": reviews.precision_by_class(config.db, q.get("bundle") or None),
            "several": 0 if q.get("bundle") else sources_in_several_bundles(config.db),
            "reviewer": request_reviewer(request, config), "times": zone_name(config.zone)})

    def charts_page(request: Request) -> Response:
        chosen = request.query_params.get("bundle") or None
        bundles = reviews.labels_and_bundles(config.db)[1]
        refused = unknown_filter(request.query_params, None, bundles)
        if refused is not None:
            return refused
        hour_svg, day_svg = charts.charts_svg(config.db, chosen, config.zone)
        return templates.TemplateResponse(request, "charts.html", {
            "hour_svg": hour_svg, "day_svg": day_svg, "bundles": bundles,
            "chosen": chosen, "several": 0 if chosen else sources_in_several_bundles(config.db)})

    def _excerpt(request: Request):
        """The detection's audio and how long a browser may keep what is made of it: a while when
        the URL names it by its key (``?k=``, as the page's do), else not without asking again."""
        row = reviews.detection(config.db, int(request.path_params["id"]))
        asked = request.query_params.get("k")
        if asked is not None and asked != reviews.detection_key(row):
            raise reviews.StaleDetection(f"detection {row['id']} is not the one the page showed: reload the page")
        excerpt = read_excerpt(row, recordings=config.recordings, clips=config.clips,
                               pre_s=config.pre_s, post_s=config.post_s, db=config.db,
                               recording_before=config.recording_before)
        return excerpt, {"Cache-Control": "private, max-age=3600" if asked else "no-store"}

    def _rendered(request: Request, render, media_type: str) -> Response:
        """The detection's excerpt rendered (WAV or PNG), at most ``DECODES_AT_ONCE`` at a time;
        503 when no turn came within ``DECODE_WAIT_S``."""
        if not decodes.acquire(timeout=DECODE_WAIT_S):
            return PlainTextResponse(f"busy: {DECODES_AT_ONCE} excerpts are being read (a recording's disk slow or "
                                     f"hung?); try again\n", status_code=503, headers={"Retry-After": "10"})
        try:
            excerpt, headers = _excerpt(request)
            return Response(render(excerpt), media_type=media_type, headers=headers)
        except reviews.StaleDetection as exc:
            return PlainTextResponse(f"{exc}\n", status_code=409)
        except (reviews.ReviewError, AudioError) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        finally:
            decodes.release()

    def audio(request: Request) -> Response:
        return _rendered(request, lambda e: e.wav_bytes(), "audio/wav")

    def spectrogram(request: Request) -> Response:
        return _rendered(request, lambda e: spectrogram_png(e.samples, e.rate, (e.mark_start_s, e.mark_end_s)),
                         "image/png")

    def store_verdict(body: dict, reviewer: str) -> Response:
        """The verdict ``body`` stored, on a worker thread: its ``BEGIN IMMEDIATE`` waits up to the
        busy timeout for the recorder's writer, and on the event loop every other request waited
        with it (a review)."""
        try:
            key = body.get("key")
            known = tuple(known_labels(config.db, reviews.labels_and_bundles(config.db)[0]))
            row = reviews.add_verdict(config.db, body["id"], str(body["verdict"]), reviewer,
                                      body.get("label"), known, key=None if key is None else str(key))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": f"malformed verdict: {exc}"}, status_code=400)
        except reviews.StaleDetection as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except reviews.UnknownDetection as exc:   # no such detection: not a malformed verdict
            return JSONResponse({"error": str(exc)}, status_code=404)
        except reviews.DatabaseBusy as exc:   # the same verdict given again may be stored
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})
        except reviews.ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(row)

    async def verdict(request: Request) -> Response:
        # Only this page's own script may judge: a form or text/plain POST from another site is a
        # "simple" request that browsers send without asking; JSON from another origin is not.
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            return JSONResponse({"error": "verdicts from another site's page are refused"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            # Said as what to send: "from the review page only" read as if scripts were refused (a newcomer trial).
            return JSONResponse({"error": "a verdict is JSON, sent with Content-Type: application/json"},
                                status_code=415)
        try:
            raw = b""
            async for chunk in request.stream():   # a verdict is a few dozen bytes: never hold more
                raw += chunk
                if len(raw) > MAX_VERDICT_BYTES:
                    return JSONResponse({"error": f"a verdict is at most {MAX_VERDICT_BYTES} bytes"}, status_code=413)
            body = json.loads(raw)
        except RecursionError:   # '[[[[…' nested too deep for json: a 500 and a traceback
            return JSONResponse({"error": "malformed verdict: nested too deep"}, status_code=400)
        except ValueError as exc:
            return JSONResponse({"error": f"malformed verdict: {exc}"}, status_code=400)
        if not isinstance(body, dict):   # Python's words ("'list' object has no attribute") said nothing
            return JSONResponse({"error": 'a verdict is a JSON object: {"id": …, "verdict": …}'}, status_code=400)
        return await run_in_threadpool(store_verdict, body, request_reviewer(request, config))

    def unreadable(request: Request, exc: Exception) -> Response:
        """A database that cannot be read any more (moved, removed, a card gone bad while the page
        is open), wherever a handler met it: one line to the browser and to the log, not a 500
        and a traceback (a review). JSON under /api/, as the page's script reads it."""
        said = str(exc) if isinstance(exc, reviews.ReviewError) else f"cannot read detections database {config.db}: {exc}"
        log.warning("%s %s: %s", request.method, request.url.path, said)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": said}, status_code=500)
        return PlainTextResponse(f"error: {said}\n", status_code=500)

    def precision(request: Request) -> Response:
        bundle = request.query_params.get("bundle") or None
        stored = [] if bundle is None else reviews.labels_and_bundles(config.db)[1]
        if bundle is not None and bundle not in stored:   # [] read as "none judged"
            return JSONResponse({"error": unknown_bundle(bundle, stored)}, status_code=404)
        return JSONResponse([dataclasses.asdict(c) | {"precision": c.precision} for c in
                             reviews.precision_by_class(config.db, bundle)])

    def verdicts_now(request: Request) -> Response:
        """``/api/verdicts?ids=1,2,3[&keys=K1,K2,K3]``: the latest verdict on each (null: none), by
        id; an id gone, or whose key no longer matches, is left out."""
        try:
            ids = [reviews.valid_id(int(i)) for i in request.query_params.get("ids", "").split(",") if i.strip()]
        except (ValueError, reviews.ReviewError):
            return JSONResponse({"error": "ids: detection ids separated by commas"}, status_code=400)
        if len(ids) > reviews.MAX_IDS_ASKED:
            return JSONResponse({"error": f"at most {reviews.MAX_IDS_ASKED} ids at a time"}, status_code=400)
        keys = request.query_params.get("keys")
        keys = None if keys is None else [k.strip() for k in keys.split(",") if k.strip()]
        if keys is not None and len(keys) != len(ids):
            return JSONResponse({"error": "keys: one per id, in the same order"}, status_code=400)
        return JSONResponse({str(i): v for i, v in reviews.latest_verdicts_of(config.db, ids, keys).items()})

    routes = [
        Route("/", index), Route("/charts", charts_page),
        Route("/detections/{id:int}/audio.wav", audio), Route("/detections/{id:int}/spectrogram.png", spectrogram),
        Route("/api/verdict", verdict, methods=["POST"]), Route("/api/precision", precision),
        Route("/api/verdicts", verdicts_now),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(BrowserGuard)]
    if config.local:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(LOCAL_HOSTS) + ["[::1]"]))
    if config.token:
        middleware.append(Middleware(TokenGate, token=config.token))
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={reviews.ReviewError: unreadable, sqlite3.Error: unreadable})


WILDCARDS = ("0.0.0.0", "::", "")   # every interface: no address another machine can open


def page_url(config: ReviewConfig) -> str:
    """The address to open; bound on every interface, this machine's name (``0.0.0.0`` reaches
    nothing from another machine)."""
    host = socket.gethostname() if config.host in WILDCARDS else config.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.port}/" + (f"?{urlencode({'token': config.token})}" if config.token else "")


def serve(config: ReviewConfig, on_ready=print) -> None:
    """Serve the page until interrupted; ``on_ready`` gets the URL to open (with its token), once
    the address is bound. ReviewServerError when it cannot be (in use, not this machine's)."""
    config = with_token(config)
    app = create_app(config)
    with _bind(config.host, config.port) as listening:
        server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                               access_log=False))
        on_ready(f"review page: {page_url(config)}")
        server.run(sockets=[listening])


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, bound here so that a taken port is one line naming
    it (uvicorn would log it and exit with status 3)."""
    sock = None
    try:
        sock = socket.socket(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except (OSError, OverflowError, UnicodeError) as e:
        if sock is not None:
            sock.close()
        raise ReviewServerError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from e
    return sock
