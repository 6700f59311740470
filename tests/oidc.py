"""A real OpenID Connect provider for tests, and a scripted browser to sign in with it.

The provider is `oidc-provider <https://github.com/panva/node-oidc-provider>`_ (Node.js), pinned in
``tests/oidc_provider/package.json`` and started by ``tests/oidc_provider/provider.mjs``; it only
ever listens on 127.0.0.1. Any login id signs in with any password; its claims are
``sub`` = the id, ``email`` = the id when it contains ``@`` else ``<id>@example.com``,
``email_verified`` = true and ``name`` = the id, until :meth:`OidcProvider.set_account` overrides
them. PKCE (S256) is required of every client, confidential ones included.

Usage::

    with OidcProvider(clients=[{"client_id": "cp", "client_secret": "s3cret",
                                "redirect_uris": ["http://127.0.0.1:9/callback"]}]) as op:
        discovery = f"{op.issuer}/.well-known/openid-configuration"
        ...
        async with httpx.AsyncClient() as browser:
            callback = await browser_login(browser, authorize_url, login="alice@example.com",
                                           redirect_prefix="http://127.0.0.1:9/callback")

To tamper with token responses, put a :class:`TokenTamperingProxy` in front (see
:func:`proxied_provider`): the provider then advertises the proxy as its issuer, so discovery, the
browser flow and the token endpoint all go through it.

Node.js and npm are needed. When they are missing, or the one-off ``npm ci`` fails, tests using the
provider are skipped, or fail when ``BYTEOR_REQUIRE_OIDC_PROVIDER=1`` (CI sets it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn, Self
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest

__all__ = [
    "REQUIRE_ENV",
    "OidcProvider",
    "TokenTamperingProxy",
    "browser_login",
    "ensure_provider_installed",
    "free_port",
    "provider_dir",
    "proxied_provider",
]

#: Set to ``1`` to turn "cannot run the provider" from a skip into a failure.
REQUIRE_ENV = "BYTEOR_REQUIRE_OIDC_PROVIDER"
LOCALHOST = "127.0.0.1"

_install_lock = threading.Lock()
_install_error: str | None = None


def provider_dir() -> Path:
    """The directory holding ``provider.mjs``, ``package.json`` and ``package-lock.json``."""
    return Path(__file__).resolve().parent / "oidc_provider"


def _unavailable(reason: str) -> NoReturn:
    message = f"OpenID Connect test provider unavailable: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_provider_installed() -> Path:
    """Return the provider's ``node_modules``, running ``npm ci`` there once if needed.

    Skips the calling test (or fails it under ``BYTEOR_REQUIRE_OIDC_PROVIDER=1``) when Node.js or
    npm is missing or the install fails.
    """
    global _install_error  # one install attempt per test session
    directory = provider_dir()
    node_modules = directory / "node_modules"
    if shutil.which("node") is None:
        _unavailable("`node` is not on PATH (install Node.js 20 or later)")
    with _install_lock:
        if (node_modules / "oidc-provider" / "package.json").is_file():
            return node_modules
        if _install_error is None:
            npm = shutil.which("npm")
            if npm is None:
                _install_error = "`npm` is not on PATH, so `npm ci` cannot install oidc-provider"
            else:
                try:
                    result = subprocess.run(
                        [npm, "ci", "--no-audit", "--no-fund"],
                        cwd=directory,
                        capture_output=True,
                        text=True,
                        timeout=600,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired) as error:
                    _install_error = f"`npm ci` in {directory} failed: {error}"
                else:
                    if result.returncode != 0:
                        _install_error = (
                            f"`npm ci` in {directory} exited with {result.returncode}:\n"
                            f"{_tail(result.stderr or result.stdout)}"
                        )
                    elif not (node_modules / "oidc-provider").is_dir():
                        _install_error = f"`npm ci` in {directory} did not install oidc-provider"
            if _install_error is None:
                return node_modules
        _unavailable(_install_error)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_all(file: IO[bytes]) -> str:
    """Everything written so far to a file a child process writes to, leaving its offset alone."""
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(file.fileno(), 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


@dataclass(init=False)
class OidcProvider:
    """An oidc-provider process on 127.0.0.1, started by :meth:`start` or ``with``.

    ``clients`` are client metadata objects as oidc-provider takes them (``client_id``,
    ``client_secret``, ``redirect_uris``, ``token_endpoint_auth_method="none"`` for a public
    client, ...); ``grant_types`` defaults to ``["authorization_code"]`` and ``response_types`` to
    ``["code"]``. An extra ``id_token_ttl`` key (seconds) overrides ``id_token_ttl`` for that
    client. ``issuer`` defaults to ``http://127.0.0.1:<port>``; it must be an origin (no path).
    """

    clients: list[dict[str, Any]]
    issuer: str
    port: int
    id_token_ttl: int
    startup_timeout: float
    conform_id_token_claims: bool

    def __init__(
        self,
        clients: list[dict[str, Any]],
        issuer: str | None = None,
        port: int | None = None,
        id_token_ttl: int = 3600,
        *,
        startup_timeout: float = 30.0,
        conform_id_token_claims: bool = False,
    ) -> None:
        self.clients = clients
        self.port = port if port is not None else free_port()
        self.issuer = (issuer or f"http://{LOCALHOST}:{self.port}").rstrip("/")
        if urlsplit(self.issuer).path:
            raise ValueError(f"the issuer must be an origin without a path, got {self.issuer!r}")
        self.id_token_ttl = id_token_ttl
        self.startup_timeout = startup_timeout
        #: True: email and name only at the userinfo endpoint (oidc-provider's default).
        self.conform_id_token_claims = conform_id_token_claims
        self._process: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Where the provider listens (``http://127.0.0.1:<port>``), which may not be the issuer."""
        if self._url is None:
            raise RuntimeError("the OpenID Connect provider is not running")
        return self._url

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def logs(self) -> str:
        """What the provider wrote on stderr so far (warnings, errors, rejected requests)."""
        return _read_all(self._stderr) if self._stderr is not None else ""

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("the OpenID Connect provider is already started")
        ensure_provider_installed()
        node = shutil.which("node")
        if node is None:  # pragma: no cover - ensure_provider_installed checked it
            _unavailable("`node` is not on PATH")
        env = {
            **os.environ,
            "OIDC_PORT": str(self.port),
            "OIDC_ISSUER": self.issuer,
            "OIDC_CLIENTS": json.dumps(self.clients),
            "OIDC_ID_TOKEN_TTL": str(self.id_token_ttl),
            "OIDC_CONFORM_ID_TOKEN_CLAIMS": "1" if self.conform_id_token_claims else "0",
            "NO_COLOR": "1",
        }
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        try:
            self._process = subprocess.Popen(
                [node, "provider.mjs"],
                cwd=provider_dir(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=self._stderr,
            )
            self._url = self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> str:
        assert self._process is not None
        assert self._stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            for line in _read_all(self._stdout).splitlines():
                if line.startswith("READY "):
                    return line.removeprefix("READY ").strip()
            returncode = self._process.poll()
            if returncode is not None:
                raise RuntimeError(
                    f"the OpenID Connect provider exited with {returncode} before it was ready:\n"
                    f"{_tail(self.logs())}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the OpenID Connect provider was not ready within {self.startup_timeout} s:\n"
                    f"{_tail(self.logs())}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        process, self._process, self._url = self._process, None, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for file in (self._stdout, self._stderr):
            if file is not None:
                file.close()
        self._stdout = self._stderr = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def set_account(self, sub: str, **claims: Any) -> None:
        """Override ``email``, ``email_verified`` and/or ``name`` of the account ``sub``.

        Takes effect for tokens issued from now on; earlier overrides of other claims stay.
        """
        response = httpx.put(
            f"{self.url}/__test/accounts/{quote(sub, safe='')}",
            json=claims,
            timeout=10,
            trust_env=False,
        )
        if response.status_code != httpx.codes.NO_CONTENT:
            raise RuntimeError(
                f"setting claims of {sub!r} failed: {response.status_code} {response.text}"
            )


# --- the scripted browser --------------------------------------------------------------------


@dataclass
class _Form:
    action: str
    method: str
    fields: dict[str, str]


class _PageParser(HTMLParser):
    """The forms (with their named inputs) and links of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._form: _Form | None = None
        self._link: list[str] | None = None
        self._href = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = _Form(
                action=attributes.get("action", ""),
                method=attributes.get("method", "get").lower(),
                fields={},
            )
            self.forms.append(self._form)
        elif tag in {"input", "button", "textarea", "select"} and self._form is not None:
            name = attributes.get("name")
            if name and tag != "button" and attributes.get("type") not in {"submit", "button"}:
                self._form.fields[name] = attributes.get("value", "")
        elif tag == "a" and "href" in attributes:
            self._href = attributes["href"]
            self._link = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "a" and self._link is not None:
            self.links.append((self._href, "".join(self._link).strip()))
            self._link = None

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            self._link.append(data)


def _parse_page(html: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser


def _describe(response: httpx.Response) -> str:
    text = response.text if response.content else "<empty body>"
    if len(text) > 4000:
        text = text[:4000] + "\n... (truncated)"
    return f"{response.request.method} {response.url} -> {response.status_code}\n{text}"


async def browser_login(
    client: httpx.AsyncClient,
    authorize_url: str,
    *,
    login: str,
    redirect_prefix: str,
    approve: bool = True,
    max_hops: int = 20,
) -> str:
    """Act as the user's browser: sign in as ``login`` and answer the consent prompt.

    ``client`` is the browser (its cookie jar holds the provider session; automatic redirects must
    be off, the default for ``httpx.AsyncClient``). Starting from ``authorize_url``, follow
    redirects, submit the provider's login form (``login``, any password) and consent form, until
    a ``Location`` starts with ``redirect_prefix``, and return that URL (carrying ``code`` and
    ``state``, or ``error``) without requesting it.

    With ``approve=False`` the user presses "Cancel" on the consent page (the dev interactions'
    abort link), so the returned URL carries ``error=access_denied``; it is an error if the
    provider does not ask for consent then (it asks once per client and browser session).
    A second visit in the same browser session skips the login form (the provider remembers the
    session) and, for the same client, the consent form.
    """
    if client.follow_redirects:
        raise ValueError("browser_login follows redirects itself: use follow_redirects=False")
    response = await client.get(authorize_url)
    logged_in = refused = False
    for _ in range(max_hops):
        location = response.headers.get("location")
        if response.is_redirect and location:
            target = urljoin(str(response.url), str(location))
            if target.startswith(redirect_prefix):
                if not approve and not refused:
                    raise AssertionError(
                        f"the provider did not ask for consent, so it could not be refused; "
                        f"it redirected to {target}"
                    )
                return target
            response = await client.get(target)
            continue

        page = _parse_page(response.text) if response.status_code == httpx.codes.OK else None
        login_form = next((f for f in page.forms if "login" in f.fields), None) if page else None
        consent_form = (
            next((f for f in page.forms if f.fields.get("prompt") == "consent"), None)
            if page
            else None
        )
        if login_form is not None:
            if logged_in:
                raise AssertionError(
                    f"the login form came back after signing in:\n{_describe(response)}"
                )
            logged_in = True
            response = await _submit(
                client, response, login_form, {"login": login, "password": "any password"}
            )
        elif consent_form is not None and approve:
            response = await _submit(client, response, consent_form, {})
        elif consent_form is not None and page is not None:
            abort = next(
                (href for href, _ in page.links if href.rstrip("/").endswith("/abort")), None
            )
            if abort is None:
                raise AssertionError(f"no abort link on the consent page:\n{_describe(response)}")
            refused = True
            response = await client.get(urljoin(str(response.url), abort))
        else:
            raise AssertionError(
                f"expected a redirect, a login form or a consent form:\n{_describe(response)}"
            )
    raise AssertionError(
        f"no redirect to {redirect_prefix} after {max_hops} steps; last page:\n{_describe(response)}"
    )


async def _submit(
    client: httpx.AsyncClient, page: httpx.Response, form: _Form, values: dict[str, str]
) -> httpx.Response:
    action = urljoin(str(page.url), form.action or str(page.url))
    data = {**form.fields, **values}
    if form.method == "post":
        return await client.post(action, data=data)
    return await client.get(action, params=data)


# --- the tampering proxy ---------------------------------------------------------------------

#: oidc-provider's token endpoint (its ``routes.token`` default).
TOKEN_PATH = "/token"

#: Headers that describe one hop (RFC 9110 section 7.6.1) or the body's framing; the proxy
#: recomputes the framing.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
    }
)


class TokenTamperingProxy:
    """A reverse proxy on 127.0.0.1 in front of the provider, which can tamper with tokens.

    Start it first (``with`` or :meth:`start`), start the provider with ``issuer=proxy.url``, then
    set :attr:`upstream` to the provider's :attr:`OidcProvider.url` (:func:`proxied_provider` does
    all of it). Knobs, safe to change from any thread while it runs:

    - :attr:`token_delay`: seconds to wait before answering a token-endpoint request;
    - :attr:`substitute_id_token`: replaces ``id_token`` in the token endpoint's JSON response.

    :attr:`hits` counts requests per path (without the query). Status, headers (every
    ``Set-Cookie`` included) and bodies pass through unchanged otherwise.
    """

    def __init__(self, upstream: str | None = None, *, token_path: str = TOKEN_PATH) -> None:
        self.token_path = token_path
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._upstream = upstream
        self._token_delay = 0.0
        self._substitute_id_token: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # knobs --------------------------------------------------------------------------------

    @property
    def upstream(self) -> str | None:
        with self._lock:
            return self._upstream

    @upstream.setter
    def upstream(self, value: str | None) -> None:
        with self._lock:
            self._upstream = value

    @property
    def token_delay(self) -> float:
        with self._lock:
            return self._token_delay

    @token_delay.setter
    def token_delay(self, value: float) -> None:
        with self._lock:
            self._token_delay = value

    @property
    def substitute_id_token(self) -> str | None:
        with self._lock:
            return self._substitute_id_token

    @substitute_id_token.setter
    def substitute_id_token(self, value: str | None) -> None:
        with self._lock:
            self._substitute_id_token = value

    def reset(self) -> None:
        """No delay, no substitution, no hits."""
        with self._lock:
            self._token_delay = 0.0
            self._substitute_id_token = None
            self.hits.clear()

    def _count(self, path: str) -> None:
        with self._lock:
            self.hits[path] += 1

    # lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return f"http://{LOCALHOST}:{self._server.server_address[1]}"

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        server = ThreadingHTTPServer((LOCALHOST, 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # forwarding ---------------------------------------------------------------------------

    def _tamper(self, path: str, status: int, body: bytes) -> bytes:
        if path != self.token_path:
            return body
        substitute = self.substitute_id_token
        if substitute is not None and status == httpx.codes.OK:
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if isinstance(document, dict) and "id_token" in document:
                document["id_token"] = substitute
                body = json.dumps(document).encode()
        delay = self.token_delay
        if delay > 0:
            time.sleep(delay)
        return body


def _make_handler(proxy: TokenTamperingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so no idle keep-alive threads outlive stop().
        protocol_version = "HTTP/1.0"
        server_version = "TokenTamperingProxy"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            """Quiet: the tests read :attr:`TokenTamperingProxy.hits` instead."""

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                chunks: list[bytes] = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in {b"\r\n", b"\n", b""}:
                    pass
                return b"".join(chunks)
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self) -> None:
            path = urlsplit(self.path).path
            proxy._count(path)
            body = self._body()
            upstream = proxy.upstream
            if upstream is None:
                self._reply(502, [("Content-Type", "text/plain")], b"no upstream configured")
                return
            target = urlsplit(upstream)
            headers = [
                (name, value)
                for name, value in self.headers.items()
                if name.lower() not in _HOP_BY_HOP and name.lower() != "accept-encoding"
            ]
            headers.append(("Accept-Encoding", "identity"))
            if body or self.command in {"POST", "PUT", "PATCH"}:
                headers.append(("Content-Length", str(len(body))))
            connection = http.client.HTTPConnection(
                target.hostname or LOCALHOST, target.port or 80, timeout=30
            )
            try:
                connection.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in headers:
                    connection.putheader(name, value)
                connection.endheaders(body or None)
                response = connection.getresponse()
                status, reason = response.status, response.reason
                response_headers = [
                    (name, value)
                    for name, value in response.getheaders()
                    if name.lower() not in _HOP_BY_HOP
                ]
                response_body = response.read()
            except OSError as error:
                self._reply(502, [("Content-Type", "text/plain")], f"upstream: {error}".encode())
                return
            finally:
                connection.close()
            response_body = proxy._tamper(path, status, response_body)
            self._reply(status, response_headers, response_body, reason)

        def _reply(
            self,
            status: int,
            headers: list[tuple[str, str]],
            body: bytes,
            reason: str | None = None,
        ) -> None:
            # Not send_response(): the upstream's own Date (and Server) pass through.
            self.send_response_only(status, reason)
            for name, value in headers:
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        setattr(Handler, f"do_{method}", Handler._forward)
    return Handler


@contextlib.contextmanager
def proxied_provider(
    clients: list[dict[str, Any]], *, id_token_ttl: int = 3600
) -> Iterator[tuple[OidcProvider, TokenTamperingProxy]]:
    """A provider whose issuer is a :class:`TokenTamperingProxy` in front of it."""
    with (
        TokenTamperingProxy() as proxy,
        OidcProvider(clients, issuer=proxy.url, id_token_ttl=id_token_ttl) as provider,
    ):
        proxy.upstream = provider.url
        yield provider, proxy
