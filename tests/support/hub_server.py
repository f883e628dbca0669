"""A small, in-memory Hugging Face Hub look-alike for tests.

The real ``huggingface_hub`` client (2.4) and ``transformers`` talk to it over HTTP on 127.0.0.1, so upload and
download code is exercised end to end without the network. It speaks just enough of the Hub protocol:

* ``GET  /api/whoami-v2``
* ``POST /api/repos/create`` (409 when the repo exists), ``DELETE /api/repos/delete``
* ``GET  /api/{models|datasets|spaces}/{ns}/{name}[/revision/{rev}]`` (repo info, with ``siblings``)
* ``GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]`` (``recursive=true`` supported, one page)
* ``POST /api/{type}s/{ns}/{name}/paths-info/{rev}``
* ``POST /api/{type}s/{ns}/{name}/preupload/{rev}`` (always ``"regular"``: no LFS, no Xet)
* ``POST /api/{type}s/{ns}/{name}/commit/{rev}`` (NDJSON: header, base64 ``file``, ``deletedFile``, ``deletedFolder``)
* ``POST /api/validate-yaml`` (accepts anything)
* ``HEAD|GET /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}`` (ETag, X-Repo-Commit, Content-Length, Range)

Errors carry ``X-Error-Code`` / ``X-Error-Message`` like the real Hub, so the client raises its usual
``RepositoryNotFoundError`` / ``RevisionNotFoundError`` / ``RemoteEntryNotFoundError`` / ``HfHubHTTPError``; a gated
repo (``add_repo(..., gated=True)``) refuses its files with 401/403 and ``X-Error-Code: GatedRepo``
(``GatedRepoError``).

Usage::

    with FakeHub(tokens={"hf_good": "alice", "hf_read": "alice"}, read_only={"hf_read"}) as hub:
        hub.patch_client(monkeypatch, tmp_path / "hf_home", token="hf_good")
        HfApi().create_repo("alice/tiny")
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

WRITER = "hf_writer_token_0123456789"
READER = "hf_reader_token_0123456789"
"""Tokens of the `hub` fixture's user alice (tests/unit/conftest.py): one that writes, one that only reads."""

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"  # the exact text the client special-cases
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


# --------------------------------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the server saw it; the Authorization header is kept apart so leaks are easy to spot."""

    method: str
    path: str  # raw (percent-encoded) path, without the query string
    query: str
    headers: dict[str, str]  # lower-cased names, Authorization removed
    authorization: str | None
    body: bytes
    status: int | None = None  # status answered; None when the connection was dropped


@dataclass
class Call:
    """A parsed request, as routes see it."""

    method: str
    args: list[str | None]  # the route's regex groups, percent-decoded
    params: dict[str, str]  # query string (last value wins)
    headers: dict[str, str]  # lower-cased names, Authorization removed
    user: str | None
    token: str | None
    body: bytes


@dataclass
class Fault:
    """An injected failure: the next `remaining` requests matching `pattern` (and `method`) get it."""

    pattern: re.Pattern[str]
    method: str | None
    remaining: int
    status: int | None = None  # None: drop the connection instead of answering
    message: str = "Injected failure"
    error_code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read_body: bool = True  # drop only: read the whole request before closing
    after_handling: bool = False  # drop only: apply the request (e.g. the commit), then die before answering
    delay_s: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to the request."""
        return (self.method is None or self.method == method) and self.pattern.search(path) is not None


@dataclass
class Commit:
    """One commit: a full snapshot of the files, like git."""

    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    """A repo with its commits and branches."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    """Gated: listing works for anyone, downloading files needs a user in `granted` (like an accepted licence)."""
    granted: set[str] = field(default_factory=set)

    def head(self, branch: str = "main") -> Commit:
        """The commit a branch points to."""
        return self.commits[self.branches[branch]]


@dataclass
class Response:
    """What a route answers; written by the handler (or thrown away when a fault drops the connection)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class HubError(Exception):
    """Raised by routes to answer an error the way the Hub does (JSON body + X-Error-* headers)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})

    def response(self) -> Response:
        """The error as an HTTP response."""
        headers = {"Content-Type": "application/json", "X-Error-Message": self.message, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return Response(self.status, json.dumps({"error": self.message}).encode(), headers)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def git_blob_oid(data: bytes) -> str:
    """Git's blob sha1: what the Hub uses as ETag and `oid` for regular files (the client compares it)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _tree_oid(entries: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(sorted(entries)).encode()).hexdigest()


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def _check_path(path: str) -> str:
    """Reject paths git would not accept, so a buggy client cannot write outside the repo."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


# --------------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: FakeHub

    def __init__(self, hub: FakeHub):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients hanging up (on purpose in fault tests); keep anything else for the test."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            self.hub._server_error(f"{type(error).__name__}: {error}")

    def close_connections(self) -> None:
        """Hang up every open keep-alive connection so their handler threads end at once."""
        with self.connections_lock:
            conns = list(self.connections)
            self.connections.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; the client pools connections
    timeout = 60  # an idle keep-alive connection is closed after this long
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence the per-request stderr lines."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        """Die without answering: the client sees the connection close with no response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _serve(self) -> None:
        hub = self.server.hub
        headers = {k.lower(): v for k, v in self.headers.items()}
        authorization = headers.pop("authorization", None)
        raw_path, _, query = self.path.partition("?")
        fault = hub._take_fault(self.command, raw_path)
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        if fault is not None and fault.status is None and not fault.read_body:
            hub._record(RecordedRequest(self.command, raw_path, query, headers, authorization, b""))
            self._drop()
            return
        body = self._read_body()
        record = RecordedRequest(self.command, raw_path, query, headers, authorization, body)
        hub._record(record)
        if fault is not None and fault.status is not None:
            response = HubError(fault.status, fault.message, fault.error_code, fault.headers).response()
        elif fault is not None:  # a drop fault: maybe apply the request first, never answer
            if fault.after_handling:
                hub._dispatch(self.command, raw_path, query, headers, authorization, body)
            self._drop()
            return
        else:
            response = hub._dispatch(self.command, raw_path, query, headers, authorization, body)
        record.status = response.status
        self._write(response)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if not any(k.lower() == "content-length" for k in response.headers):
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


# --------------------------------------------------------------------------------------------------------------------
# The hub
# --------------------------------------------------------------------------------------------------------------------


class FakeHub:
    """An in-memory Hub on 127.0.0.1 with tokens, private repos, fault injection and a request log."""

    def __init__(self, tokens: Mapping[str, str] | None = None, read_only: Iterable[str] = ()):
        """`tokens` maps token -> username; tokens in `read_only` get 403 on every write."""
        self.tokens: dict[str, str] = dict(tokens or {})
        self.read_only: set[str] = set(read_only)
        unknown = self.read_only - self.tokens.keys()
        if unknown:
            raise ValueError(f"read_only tokens not in tokens: {sorted(unknown)}")
        self.repos: dict[tuple[str, str], Repo] = {}
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._counter = itertools.count()
        self.server_errors: list[str] = []  # bugs in FakeHub itself (answered as 500); tests should expect none
        self.url = ""

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        """Listen on a free port in a background thread; `.url` is set once this returns.

        Starting again after `stop()` keeps the repos but gets a new port (re-point the client).
        """
        if self._server is not None:
            return self
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeHub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and hang up open connections; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """host:port of the server."""
        return urlsplit(self.url).netloc

    def patch_client(self, monkeypatch: Any, home: str | Path, token: str | None = None) -> None:
        """Point huggingface_hub/transformers at this hub; see `point_client_at`."""
        point_client_at(monkeypatch, self.url, home, token=token)

    # ---- fault injection -------------------------------------------------------------------------------------------

    def fail_next(
        self,
        pattern: str,
        status: int,
        times: int = 1,
        *,
        method: str | None = None,
        message: str | None = None,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> Fault:
        """Answer `status` to the next `times` requests whose raw path matches regex `pattern` (re.search)."""
        fault = Fault(
            re.compile(pattern), method, times, status, message or f"Injected HTTP {status}", error_code,
            dict(headers or {}), delay_s=delay_s,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def drop_next(
        self,
        pattern: str,
        times: int = 1,
        *,
        method: str | None = None,
        read_body: bool = True,
        after_handling: bool = False,
        delay_s: float = 0.0,
    ) -> Fault:
        """Close the connection without answering the next `times` matching requests (a dying server).

        `read_body=False` hangs up before reading the request body; `after_handling=True` applies the request
        first (the commit lands) and then hangs up, so the client cannot know it succeeded.
        """
        fault = Fault(
            re.compile(pattern), method, times, None, read_body=read_body, after_handling=after_handling,
            delay_s=delay_s,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget all pending faults."""
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> list[Fault]:
        """Faults that have not fired yet (all their `times`)."""
        with self._lock:
            return list(self._faults)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ---- request log -----------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """All requests so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self._requests.clear()

    def find_requests(self, method: str | None = None, pattern: str | None = None) -> list[RecordedRequest]:
        """Requests with this method and/or a raw path matching regex `pattern`."""
        rx = re.compile(pattern) if pattern else None
        return [
            r for r in self.requests if (method is None or r.method == method) and (rx is None or rx.search(r.path))
        ]

    def token_leaks(self, token: str) -> list[str]:
        """Where `token` appeared other than as `Authorization: Bearer <token>` (path, query, headers, body)."""
        leaks = []
        for r in self.requests:
            where = [
                name
                for name, text in (("path", unquote(r.path)), ("path", r.path), ("query", unquote(r.query)))
                if token in text
            ]
            where += [f"header {k}" for k, v in r.headers.items() if token in v]
            if token.encode() in r.body:
                where.append("body")
            if r.authorization is not None and token in r.authorization and r.authorization != f"Bearer {token}":
                where.append("malformed authorization")
            leaks += [f"{r.method} {r.path}: {w}" for w in dict.fromkeys(where)]
        return leaks

    def _server_error(self, text: str) -> None:
        with self._lock:
            self.server_errors.append(text)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # ---- direct access for tests (no HTTP) -------------------------------------------------------------------------

    def add_repo(
        self, repo_id: str, *, repo_type: str = "model", private: bool = False, gated: bool = False,
        granted: Iterable[str] = (),
    ) -> Repo:
        """Create a repo directly, with the Hub's initial `.gitattributes` commit on `main`.

        A `gated` repo serves its files only to the users in `granted` (those who accepted its conditions); others get
        401 (anonymous) or 403 (logged in) with `X-Error-Code: GatedRepo`, as on the Hub.
        """
        with self._lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                raise ValueError(f"{repo_type} repo {repo_id} exists")
            repo = Repo(repo_type, repo_id, private, _now(), gated=gated, granted=set(granted))
            self.repos[key] = repo
            self._commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit", "")
            return repo

    def put_files(
        self, repo_id: str, files: Mapping[str, bytes], *, repo_type: str = "model", message: str = "seed"
    ) -> str:
        """Commit files directly onto `main` (creating the repo if needed); returns the commit oid."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id)) or self.add_repo(repo_id, repo_type=repo_type)
            new = {**repo.head().files, **{_check_path(p): bytes(d) for p, d in files.items()}}
            return self._commit(repo, "main", new, message, "").oid

    def files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repo at a revision (a copy)."""
        with self._lock:
            return dict(self._resolve(self._repo(repo_type, repo_id), revision).files)

    def history(self, repo_id: str, branch: str = "main", *, repo_type: str = "model") -> list[Commit]:
        """Commits reachable from `branch`, newest first."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            out, oid = [], repo.branches[branch]
            while oid is not None:
                out.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return out

    # ---- helpers ---------------------------------------------------------------------------------------------------

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], summary: str, description: str) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}\n{parent}\n{summary}\n{time.time_ns()}\n{next(self._counter)}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, summary, description, files, _now())
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: Repo, revision: str) -> Commit:
        if revision in repo.branches:
            return repo.head(revision)
        if revision in repo.commits:
            return repo.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            found = [c for oid, c in repo.commits.items() if oid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _user(self, authorization: str | None) -> tuple[str | None, str | None]:
        """(username, token) for the request; an unknown token is a 401 everywhere, as on the Hub."""
        if authorization is None:
            return None, None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise HubError(401, INVALID_CREDENTIALS)
        return self.tokens[token], token

    def _readable(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self._repo(repo_type, repo_id)
        if repo.private and user is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        if repo.private and user != repo_id.split("/")[0]:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _check_gate(repo: Repo, user: str | None) -> None:
        """Refuse a gated repo's files the way the Hub does (status, error code, and messages modelled on its own)."""
        if not repo.gated or (user is not None and (user in repo.granted or user == repo.repo_id.split("/")[0])):
            return
        kind = repo.repo_type
        if user is None:
            raise HubError(401, f"Access to {kind} {repo.repo_id} is restricted. You must have access to it and be "
                           "authenticated to access it. Please log in.", "GatedRepo")
        raise HubError(403, f"Access to {kind} {repo.repo_id} is restricted and you are not in the authorized list. "
                       f"Visit {repo.repo_id} to ask for access.", "GatedRepo")

    def _writable(self, repo_type: str, repo_id: str, user: str | None, token: str | None) -> Repo:
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repo")
        repo = self._readable(repo_type, repo_id, user)
        self._check_write(repo_id.split("/")[0], user, token)
        return repo

    def _check_write(self, namespace: str, user: str | None, token: str | None) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repo")
        if token in self.read_only:
            raise HubError(403, "This token is read-only: write access is denied")
        if namespace != user:
            raise HubError(403, f"You don't have the rights to write under the namespace {namespace!r}")

    # ---- routing ---------------------------------------------------------------------------------------------------

    def _dispatch(
        self, method: str, raw_path: str, query: str, headers: dict[str, str], authorization: str | None, body: bytes
    ) -> Response:
        """Route a request; every route runs under the lock, so the store is consistent."""
        try:
            user, token = self._user(authorization)
            params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
            for route_methods, rx, handler in _ROUTES:
                match = rx.match(raw_path)
                if match and method in route_methods:
                    args = [unquote(g) if g is not None else None for g in match.groups()]
                    with self._lock:
                        return handler(self, Call(method, args, params, headers, user, token, body))
            raise HubError(404, f"FakeHub has no route for {method} {raw_path}")
        except HubError as err:
            return err.response()
        except (json.JSONDecodeError, binascii.Error) as err:  # malformed client input
            return HubError(400, f"Malformed request body: {err}").response()
        except Exception as err:  # a FakeHub bug or a malformed request: answer like a server would, keep a note
            self._server_error(f"{method} {raw_path}: {type(err).__name__}: {err}")
            return HubError(500, f"FakeHub internal error: {type(err).__name__}: {err}").response()

    def _base_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _whoami(self, call: Call) -> Response:
        if call.user is None:
            raise HubError(401, INVALID_CREDENTIALS)
        role = "read" if call.token in self.read_only else "write"
        user = call.user
        return _json({
            "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user, "fullname": user,
            "email": f"{user}@example.com", "emailVerified": True, "isPro": False, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": role}},
        })

    def _create_repo(self, call: Call) -> Response:
        payload = json.loads(call.body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        namespace = payload.get("organization") or call.user
        self._check_write(namespace or "", call.user, call.token)
        if not payload.get("name"):
            raise HubError(400, "Missing repo name")
        repo_id = f"{namespace}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        if (repo_type, repo_id) in self.repos:
            url = self._base_url(self.repos[(repo_type, repo_id)])
            err = HubError(409, f"You already created this {repo_type} repo")
            resp = err.response()
            resp.body = json.dumps({"error": err.message, "url": url}).encode()
            return resp
        repo = self.add_repo(repo_id, repo_type=repo_type, private=private)
        return _json({"url": self._base_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self, call: Call) -> Response:
        payload = json.loads(call.body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or call.user}/{payload['name']}"
        self._writable(repo_type, repo_id, call.user, call.token)
        del self.repos[(repo_type, repo_id)]
        return _json({})

    def _repo_info(self, call: Call) -> Response:
        kind, ns, name, revision = call.args
        repo_id = f"{ns}/{name}"
        repo = self._readable(REPO_TYPES[kind], repo_id, call.user)
        commit = self._resolve(repo, revision or "main")
        with_blobs = str(call.params.get("blobs", "")).lower() in ("1", "true")
        siblings = []
        for path, data in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(data), blobId=git_blob_oid(data))
            siblings.append(sibling)
        return _json({
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": ns, "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": [],
            "siblings": siblings, "usedStorage": sum(len(d) for d in commit.files.values()),
        })

    @staticmethod
    def _entry(path: str, files: Mapping[str, bytes]) -> dict[str, Any]:
        if path in files:
            return {"type": "file", "oid": git_blob_oid(files[path]), "size": len(files[path]), "path": path}
        children = [p for p in files if p.startswith(path + "/")]
        return {"type": "directory", "oid": _tree_oid(children), "size": 0, "path": path}

    def _tree(self, call: Call) -> Response:
        kind, ns, name, revision, sub = call.args
        files = self._resolve(self._readable(REPO_TYPES[kind], f"{ns}/{name}", call.user), revision).files
        prefix = (sub or "").strip("/")
        if prefix and not any(p.startswith(prefix + "/") for p in files):
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound")
        recursive = str(call.params.get("recursive", "")).lower() in ("1", "true")
        paths: set[str] = set()
        for path in files:
            rest = path[len(prefix) + 1 :] if prefix else path
            if prefix and not path.startswith(prefix + "/"):
                continue
            parts = rest.split("/")
            base = f"{prefix}/" if prefix else ""
            if recursive:  # every file plus every folder on the way, like the Hub
                paths.update(base + "/".join(parts[: i + 1]) for i in range(len(parts)))
            else:
                paths.add(base + parts[0])
        return _json([self._entry(p, files) for p in sorted(paths)])

    def _paths_info(self, call: Call) -> Response:
        kind, ns, name, revision = call.args
        files = self._resolve(self._readable(REPO_TYPES[kind], f"{ns}/{name}", call.user), revision).files
        if call.body.startswith(b"{"):
            wanted = json.loads(call.body).get("paths", [])
        else:  # the client posts a form: paths=a&paths=b&expand=False
            wanted = parse_qs(call.body.decode(), keep_blank_values=True).get("paths", [])
        out = []
        for path in wanted:
            path = path.strip("/")
            if path in files or any(p.startswith(path + "/") for p in files):
                out.append(self._entry(path, files))
        return _json(out)

    def _preupload(self, call: Call) -> Response:
        kind, ns, name, revision = call.args
        repo = self._writable(REPO_TYPES[kind], f"{ns}/{name}", call.user, call.token)
        files = self._resolve(repo, revision).files if revision in repo.branches else {}
        out = []
        for entry in json.loads(call.body or b"{}").get("files", []):
            path = entry["path"]
            oid = git_blob_oid(files[path]) if path in files else None
            out.append({"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return _json({"files": out, "commitOid": repo.branches.get(revision)})

    def _commit_route(self, call: Call) -> Response:
        kind, ns, name, revision = call.args
        repo = self._writable(REPO_TYPES[kind], f"{ns}/{name}", call.user, call.token)
        if str(call.params.get("create_pr", "")).lower() in ("1", "true"):
            raise HubError(400, "FakeHub does not support create_pr")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in call.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        head = repo.head(revision)
        parent = header.get("parentCommit")
        if parent is not None and parent != head.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for op in lines[1:]:
            self._apply(files, op.get("key"), op.get("value") or {})
        commit = self._commit(repo, revision, files, header.get("summary", ""), header.get("description", ""))
        return _json({
            "success": True, "commitOid": commit.oid, "commitUrl": f"{self._base_url(repo)}/commit/{commit.oid}",
            "hookOutput": "",
        })

    @staticmethod
    def _apply(files: dict[str, bytes], key: str | None, value: dict[str, Any]) -> None:
        """Apply one NDJSON commit operation to a snapshot."""
        path = _check_path(str(value.get("path", "")).strip("/") if key == "deletedFolder" else value.get("path", ""))
        if key == "file":
            if value.get("encoding") != "base64":
                raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
            files[path] = base64.b64decode(value["content"], validate=True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in files if p.startswith(path + "/")]
            if not doomed:
                raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            for p in doomed:
                del files[p]
        elif key == "lfsFile":
            raise HubError(422, "FakeHub stores no LFS objects: preupload answers 'regular' for every file")
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    def _validate_yaml(self, call: Call) -> Response:
        return _json({"errors": [], "warnings": []})

    def _resolve_file(self, call: Call) -> Response:
        prefix, ns, name, revision, path = call.args
        repo = self._readable(REPO_TYPES[(prefix or "models").rstrip("/")], f"{ns}/{name}", call.user)
        commit = self._resolve(repo, revision)
        self._check_gate(repo, call.user)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        headers = {
            "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_oid(data)}"',
        }
        rng = self._range(call.headers.get("range"), len(data))
        if rng is None:
            return Response(200, data, headers)
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(206, data[start : end + 1], headers)

    @staticmethod
    def _range(header: str | None, size: int) -> tuple[int, int] | None:
        """Parse a single `bytes=a-b` range (what the client sends to resume a download)."""
        match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
        if not match or not (match.group(1) or match.group(2)):
            return None
        if not match.group(1):
            start = max(size - int(match.group(2)), 0)
            return start, size - 1
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        if start >= size:
            raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
        return start, end


_Route = Callable[..., Response]
_TYPES = "(models|datasets|spaces)"
_SEG = "([^/]+)"
_ROUTES: list[tuple[tuple[str, ...], re.Pattern[str], _Route]] = [
    (("GET",), re.compile(r"^/api/whoami-v2$"), FakeHub._whoami),
    (("POST",), re.compile(r"^/api/repos/create$"), FakeHub._create_repo),
    (("DELETE",), re.compile(r"^/api/repos/delete$"), FakeHub._delete_repo),
    (("POST",), re.compile(r"^/api/validate-yaml$"), FakeHub._validate_yaml),
    (("GET",), re.compile(rf"^/api/{_TYPES}/{_SEG}/{_SEG}(?:/revision/{_SEG})?$"), FakeHub._repo_info),
    (("GET",), re.compile(rf"^/api/{_TYPES}/{_SEG}/{_SEG}/tree/{_SEG}(?:/(.*))?$"), FakeHub._tree),
    (("POST",), re.compile(rf"^/api/{_TYPES}/{_SEG}/{_SEG}/paths-info/{_SEG}$"), FakeHub._paths_info),
    (("POST",), re.compile(rf"^/api/{_TYPES}/{_SEG}/{_SEG}/preupload/{_SEG}$"), FakeHub._preupload),
    (("POST",), re.compile(rf"^/api/{_TYPES}/{_SEG}/{_SEG}/commit/{_SEG}$"), FakeHub._commit_route),
    (("GET", "HEAD"), re.compile(rf"^/(datasets/|spaces/)?{_SEG}/{_SEG}/resolve/{_SEG}/(.+)$"), FakeHub._resolve_file),
]


# --------------------------------------------------------------------------------------------------------------------
# Pointing the client at the fake hub
# --------------------------------------------------------------------------------------------------------------------


def point_client_at(monkeypatch: Any, endpoint: str, home: str | Path, token: str | None = None) -> None:
    """Make huggingface_hub (and transformers, if imported) use `endpoint`, with all caches and tokens under `home`.

    huggingface_hub reads its environment once, at import, into `huggingface_hub.constants`; several values are
    copied further at import time (the module-level `HfApi` behind `huggingface_hub.create_repo` & co, the redirect
    allow-list, transformers' shared `HfApi`). Setting env vars alone is therefore not enough: this patches both, with
    `monkeypatch`, so everything is restored after the test. `token`, if given, becomes the implicit token (HF_TOKEN);
    otherwise no implicit token exists at all (none from env, none from a token file). Import transformers before
    calling this if the test uses it, so its cached `HfApi` is reset too and not left pointing here afterwards.
    """
    import huggingface_hub.hf_api as hf_api
    import huggingface_hub.utils._http as hf_http
    from huggingface_hub import constants

    endpoint = endpoint.rstrip("/")
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"), "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
        "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    unset = ("TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING")
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)

    patched = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname or ""},
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"), "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"), "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_ETAG_TIMEOUT": 5, "HF_HUB_DOWNLOAD_TIMEOUT": 5,
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_http, "_HUB_ORIGINS", hf_http._HUB_ORIGINS | {hf_http._url_origin(endpoint)})
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # behind huggingface_hub.create_repo, upload_folder, ...
    if "transformers" in sys.modules:  # transformers caches one HfApi (and its endpoint) on first use
        import transformers.utils.hub as tf_hub

        monkeypatch.setattr(tf_hub, "_hf_api", None, raising=False)
