"""The GitHub REST source: a repository's releases, tags, commits, issues, pulls, runs or events."""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import orjson

from bridge.errors import SourceError
from bridge.http import (
    MAX_HOST_WAIT,
    HttpClient,
    Response,
    display,
    host_key,
    parse_retry_after,
    until,
)
from bridge.sources._common import body_hash, check_http_url
from bridge.sources.base import CHANGE_KINDS, MAX_DEPTH, Fetched, FetchState, Option, Source
from bridge.sources.github_app import app_of, check_app, forget, installation_token
from bridge.sources.github_budget import WINDOW, Budget, budget_for

log = logging.getLogger("bridge.sources.github")

clock = time.time  # what "now" is for budgets and poll intervals; tests move it without sleeping

DEFAULT_API = "https://api.github.com"
API_VERSION = "2022-11-28"
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
SECONDARY_WAIT = 60.0  # GitHub: without Retry-After, wait at least a minute
MAX_WAIT = 3600.0  # the exponential secondary backoff stops growing here
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PERMANENT = frozenset({301, 308})
# Sorted by last update, an edit to an old issue moves it to page 1, the one asked conditionally.
_RECENT_FIRST = (("state", "all"), ("sort", "updated"), ("direction", "desc"))


@dataclass(frozen=True)
class Watch:
    """What one `watch:` polls, how its items are keyed, and its ignore and `on` defaults."""

    path: str  # below /repos/OWNER/NAME/
    key: str
    ignore: tuple[str, ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    unwrap: str | None = None  # the answer is an object holding the list under this name
    on: frozenset[str] = CHANGE_KINDS


WATCHES: dict[str, Watch] = {
    # Reactions and download counts move without the release changing.
    "releases": Watch("releases", "id", ("reactions", "assets.download_count")),
    "tags": Watch("tags", "name"),
    "commits": Watch("commits", "sha", ("commit.comment_count",)),
    # updated_at only mirrors the change that moved it; reactions are not an edit.
    "issues": Watch("issues", "id", ("reactions", "updated_at"), _RECENT_FIRST),
    # head.repo/base.repo carry the repositories' pushed_at, star and fork counts; the test
    # merge commit of an open pull request is recomputed whenever its base branch moves.
    "pulls": Watch(
        "pulls", "id", ("updated_at", "merge_commit_sha", "head.repo", "base.repo"), _RECENT_FIRST
    ),
    "workflow_runs": Watch(
        "actions/runs",
        "id",
        ("updated_at", "repository", "head_repository"),
        unwrap="workflow_runs",
    ),
    # Events never change, and old ones fall out of GitHub's 300-event window all the time.
    "events": Watch("events", "id", on=frozenset({"added"})),
}


class GitHubSource(Source):
    """Polls one list of a GitHub repository through the REST API."""

    kind = "github"
    options = {
        "repo": Option("str", required=True, help="owner/name"),
        "watch": Option("choice", default="releases", choices=tuple(WATCHES)),
        "branch": Option("str", help="watch: commits of this branch (default: the default one)"),
        "token": Option("token", secret=True),
        "app": Option(
            "mapping",
            secret=True,
            help="a GitHub App: {app_id, installation_id, private_key_file | private_key}",
        ),
        "api_url": Option(
            "str", default=DEFAULT_API, help="GitHub Enterprise: https://HOST/api/v3"
        ),
        "max_pages": Option("int", default=10),
    }
    displaces = {"app": ("token",)}  # an app source does not take the defaults' token

    @classmethod
    def check(cls, options: Any) -> list[tuple[str, str]]:
        """repo must be owner/name; branch goes with watch: commits; api_url is http(s)."""
        problems: list[tuple[str, str]] = []
        repo = options.get("repo")
        if not (isinstance(repo, str) and REPO_RE.match(repo)) or any(
            part in (".", "..") for part in str(repo).split("/")
        ):
            problems.append(("repo", f"{repo!r} is not owner/name (like encode/httpx)"))
        if options.get("branch") is not None and options.get("watch") != "commits":
            problems.append(("branch", "is only used with watch: commits"))
        if (problem := check_http_url(options.get("api_url", DEFAULT_API))) is not None:
            problems.append(("api_url", problem))
        if options.get("max_pages", 10) < 1:
            problems.append(("max_pages", "must be at least 1"))
        if options.get("app") is not None:
            problems += check_app(options["app"])
            if options.get("token"):
                problems.append(("app", "give token: or app:, not both"))
        return problems

    @property
    def watch(self) -> Watch:
        """What this source polls."""
        return WATCHES[self.spec.options.get("watch") or "releases"]

    @functools.cached_property
    def host(self) -> str | None:
        """The host polled (the configured URL's; a redirect is not followed here)."""
        return host_key(self._api)

    @property
    def items_expr(self) -> str | None:
        """Each page is a list of items (workflow runs are unwrapped when fetched)."""
        return "@"

    @property
    def key_expr(self) -> str | None:
        """id, or name for tags, sha for commits."""
        return self.watch.key

    @property
    def ignore(self) -> tuple[str, ...]:
        """The watch's defaults, then the user's `ignore:`."""
        return tuple(dict.fromkeys((*self.watch.ignore, *self.spec.ignore)))

    @property
    def on(self) -> frozenset[str]:
        """The configured `on:`, else the watch's default (events: only added)."""
        return self.spec.on if self.spec.on is not None else self.watch.on

    @property
    def _api(self) -> str:
        return str(self.spec.options.get("api_url") or DEFAULT_API).rstrip("/")

    @property
    def _who(self) -> str:
        if self.spec.options.get("app") is not None:
            return "this GitHub App installation"
        return "this token" if self._token else "unauthenticated requests"

    @property
    def _token(self) -> str | None:
        return self.spec.options.get("token") or None

    def url(self) -> str:
        """The first page's URL as configured (before any remembered redirect)."""
        opts, watch = self.spec.options, self.watch
        query = [("per_page", "100"), *watch.query]
        if opts.get("branch"):
            query.append(("sha", str(opts["branch"])))
        return f"{self._api}/repos/{opts['repo']}/{watch.path}?{urlencode(query)}"

    def _headers(self, url: str, token: str | None) -> dict[str, str]:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
        # The token goes only to the configured API's origin, wherever a redirect points.
        if token and urlsplit(url)[:2] == urlsplit(self._api)[:2]:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def fetch(self, http: HttpClient, state: FetchState) -> Fetched:
        """Fetch the watched list: conditional page 1, then rel="next" pages up to max_pages."""
        now = clock()
        app_conf, token = self.spec.options.get("app"), self._token
        # An app's budget is its installation's, whichever of its tokens is current.
        installation = str(app_conf["installation_id"]) if app_conf is not None else None
        budget = budget_for(self._api, token, installation=installation)
        budget.users[self.name] = now
        # A wait an earlier run or another instance was told (kept in the state, read back by
        # the engine): `bridge once` from cron, or the next instance on a shared state, must
        # not spend a request on a token that is spent until the reset.
        if (told := http.blocked_until(budget.key)) is not None and told > budget.blocked_until:
            reason = f"GitHub rate limit for {self._who} (from an earlier run or instance)"
            budget.block(told, reason)
        if budget.blocked_until > now:
            raise SourceError(
                f"{budget.reason}: no request before {until(budget.blocked_until, now)} "
                f"({budget.blocked_until - now:.0f}s from now)",
                retry_after=budget.blocked_until - now,
            )
        extra = dict(state.extra)
        not_before = extra.get("not_before")
        if isinstance(not_before, int | float) and now < not_before:
            return Fetched(unchanged=True, state=state)  # X-Poll-Interval
        if (hold := budget.wait(now, extra.get("last_request_at"))) > 0:
            log.debug("%s: GitHub budget low, next request in %.0fs", self.name, hold)
            return Fetched(unchanged=True, state=state)

        configured = self.url()
        moved_url = state.url if extra.get("moved_from") == configured else None
        app = app_of(self._api, app_conf) if app_conf is not None else None
        if app is not None:
            token = await installation_token(http, app, self.spec.timeout)
        try:
            first, moved = await self._first_page(
                http, moved_url or configured, state, budget, token
            )
        except SourceError as exc:
            if app is not None and token is not None and exc.status == 401:
                forget(app, token)  # revoked or expired early: the next poll gets a new one
            raise
        extra["last_request_at"] = now
        extra.pop("not_before", None)
        if (interval := _seconds(first.headers.get("X-Poll-Interval"))) is not None:
            extra["not_before"] = now + min(interval, MAX_HOST_WAIT)
        if moved is not None:
            moved_url = moved
            extra["moved_from"] = configured
            log.info(
                "%s: GitHub moved %s permanently to %s",
                self.name,
                display(configured),
                display(moved),
            )
        elif moved_url is None:
            extra.pop("moved_from", None)
        if first.status == 304:
            return Fetched(
                unchanged=True,
                state=FetchState(
                    etag=first.headers.get("ETag") or state.etag,
                    last_modified=first.headers.get("Last-Modified") or state.last_modified,
                    body_hash=state.body_hash,
                    url=moved_url,
                    extra=extra,
                ),
            )
        bodies, complete = await self._more_pages(http, first, budget, token)
        digest = body_hash(bodies)
        new_state = FetchState(
            etag=first.headers.get("ETag"),
            last_modified=first.headers.get("Last-Modified"),
            body_hash=digest,
            url=moved_url,
            extra=extra,
        )
        if digest == state.body_hash:
            return Fetched(unchanged=True, state=new_state)
        pages = [self._items(body, first.url) for body in bodies]
        return Fetched(unchanged=False, state=new_state, pages=pages, complete=complete)

    async def _first_page(
        self, http: HttpClient, url: str, state: FetchState, budget: Budget, token: str | None
    ) -> tuple[Response, str | None]:
        """Page 1, conditionally; redirects followed by hand so a 301 can be remembered."""
        moved: str | None = None
        permanent = True  # only an all-permanent chain may replace the URL for good
        for _ in range(MAX_REDIRECTS + 1):
            response = await http.request(
                "GET",
                url,
                headers=self._headers(url, token),
                etag=state.etag,
                last_modified=state.last_modified,
                timeout=self.spec.timeout,
                max_bytes=self.spec.max_bytes,
                follow_redirects=False,
                block_host=False,  # GitHub limits a token, not the host: budgets track that
            )
            if response.status not in _REDIRECTS:
                self._accept(response, budget, http)
                return response, moved
            budget.observe(response.headers, clock())
            location = response.headers.get("Location")
            if not location:
                raise SourceError(f"HTTP {response.status} from {display(url)} without a Location")
            target = urljoin(url, location)
            here, there = urlsplit(url), urlsplit(target)
            if not there.query and here.query and there[:2] == here[:2]:
                # Keep per_page and the sort order if the new place on the same API was given
                # without them; another host gets no more than its Location says.
                target = f"{target}?{here.query}"
            permanent = permanent and response.status in _PERMANENT
            if permanent:
                moved = target
            url = target
        raise SourceError(f"more than {MAX_REDIRECTS} redirects from {display(self.url())}")

    async def _more_pages(
        self, http: HttpClient, first: Response, budget: Budget, token: str | None
    ) -> tuple[list[bytes], bool]:
        """The bodies of page 1 and its rel="next" pages up to max_pages; whether none is left."""
        max_pages = int(self.spec.options.get("max_pages") or 10)
        bodies, total, page = [first.body], len(first.body), first
        while (next_url := page.links.get("next")) is not None and len(bodies) < max_pages:
            page = await http.request(
                "GET",
                next_url,
                headers=self._headers(next_url, token),
                timeout=self.spec.timeout,
                max_bytes=self.spec.max_bytes,
                block_host=False,
            )
            self._accept(page, budget, http)
            bodies.append(page.body)
            total += len(page.body)
            if total > self.spec.max_bytes:
                raise SourceError(f"pages up to {display(next_url)} are over max_bytes in total")
        return bodies, "next" not in page.links

    def _items(self, body: bytes, url: str) -> list[Any]:
        try:
            page = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if "depth limit" in str(exc):  # orjson's own limit (1024), far past ours
                raise SourceError(f"document nested deeper than {MAX_DEPTH} levels") from exc
            raise SourceError(f"invalid JSON from {display(url)}: {exc}") from exc
        unwrap = self.watch.unwrap
        if unwrap is not None:
            page = page.get(unwrap) if isinstance(page, dict) else None
        if not isinstance(page, list):
            raise SourceError(
                f"unexpected answer from {display(url)}: not a list of {self.watch.path}"
            )
        if self.watch.path == "issues":
            # The issues list has pull requests too; watch: pulls is for those.
            page = [i for i in page if not (isinstance(i, dict) and "pull_request" in i)]
        return page

    def _accept(self, response: Response, budget: Budget, http: HttpClient) -> None:
        """Note the budget an answer reports; raise SourceError unless it is a 2xx or 304."""
        now = clock()
        budget.observe(response.headers, now)
        status = response.status
        if 200 <= status < 300 or status == 304:
            budget.strikes = 0
            return
        message = _message(response.body)
        if status in (403, 429):
            self._rate_limited(response, budget, message, now, http)
        try:
            response.check()
        except SourceError as exc:
            text = f"{exc}: {message}" if message else str(exc)
            raise SourceError(text, retry_after=exc.retry_after, status=status) from None
        # a 1xx or 3xx: not an answer
        raise SourceError(f"HTTP {status} from {display(response.url)}")

    def _rate_limited(
        self, response: Response, budget: Budget, message: str, now: float, http: HttpClient
    ) -> None:
        """Raise SourceError and block the budget if this 403/429 is a rate limit."""
        headers = response.headers
        who = self._who
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        if retry_after is not None:
            retry_after = min(retry_after, MAX_HOST_WAIT)  # 999999999 must not stop it for years
        lowered = message.lower()
        secondary = "secondary rate limit" in lowered or "abuse" in lowered
        if headers.get("X-RateLimit-Remaining") == "0" and not secondary:
            if retry_after is not None:
                ends = now + retry_after
            else:
                reset = _seconds(headers.get("X-RateLimit-Reset"))
                ends = min(reset, now + WINDOW) if reset and reset > now else now + SECONDARY_WAIT
            budget.block(ends, f"GitHub API rate limit exhausted for {who}")
        elif secondary or retry_after is not None or response.status == 429:
            budget.strikes += 1
            first = retry_after if retry_after is not None else SECONDARY_WAIT
            # GitHub asks for exponentially longer waits while the limit keeps answering.
            backoff = min(MAX_WAIT, SECONDARY_WAIT * 2 ** (budget.strikes - 1))
            wait = first if budget.strikes == 1 else max(first, backoff)
            budget.block(
                now + wait, f"GitHub secondary rate limit for {who} ({budget.strikes} in a row)"
            )
        else:
            return  # a plain 403: no permission, or a blocked resource
        http.block(budget.key, budget.blocked_until)  # the engine keeps it for the next run too
        wait = budget.blocked_until - now
        raise SourceError(
            f"{budget.reason} ({response.status} from {display(response.url)}): no request "
            f"before {until(budget.blocked_until, now)} ({wait:.0f}s from now)",
            retry_after=wait,
        )


def _message(body: bytes) -> str:
    """GitHub's error `message`, on one line and short, or ""."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    message = doc.get("message") if isinstance(doc, dict) else None
    return " ".join(str(message).split())[:200] if message else ""


def _seconds(value: str | None) -> float | None:
    """A header's non-negative number of seconds (or epoch time), None when it is not one."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < math.inf else None
