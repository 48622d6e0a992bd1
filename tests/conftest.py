"""Shared fixtures: one real server of each kind per test session (Dovecot, and the
compatibility matrix's Cyrus, Courier, pymap and reduced Dovecots), a fresh user per
test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings

from devtools.devserver import Dovecot

# Imported before any test replaces what it reads with a spy (see its `_listing`).
from mirrorsync.sync.oracle import ENV as PLAN_ORACLE_ENV
from tests import servers

# CI gets the same examples every run (HYPOTHESIS_PROFILE=ci, set by .ci/run), so a
# landing depends on the code, not on the draw; a run anywhere else explores anew.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

_user_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config digest (see mirrorsync.configcache) of every run a test makes
    goes to a directory of the test's own, never to the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _plan_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sync a test makes, in process or in a subprocess, also plans the full way
    and fails if a fast path planned anything else (see mirrorsync.sync.oracle). A test
    that measures what a run costs or imports turns it off for itself."""
    monkeypatch.setenv(PLAN_ORACLE_ENV, "1")


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def dovecot_basic() -> Iterator[Dovecot]:
    """A Dovecot that advertises none of the extensions mirrorsync has fast paths for,
    so the fallbacks are tested against a real server."""
    server = Dovecot(capabilities="IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS IDLE").start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def dovecot_quota() -> Iterator[Dovecot]:
    """A Dovecot with the quota plugin (QUOTA, a 1 GiB STORAGE limit per user), for
    `mirrorsync quota` and the archive tests."""
    server = Dovecot(quota=True).start()
    yield server
    server.cleanup()


def _serve(server: Any) -> Iterator[Any]:
    """Start a matrix server for the session. One that is not installed skips its
    tests, except under CI, where every server must run (a broken install must not
    hide behind skips)."""
    try:
        server.start()
    except servers.Unavailable as e:
        server.cleanup()
        if os.environ.get("CI") == "true":
            pytest.fail(f"{e} (CI=true: every server of the matrix must run)", pytrace=False)
        pytest.skip(str(e))
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def cyrus_slash() -> Iterator[servers.Cyrus]:
    """Cyrus IMAP with '/' as separator (unixhierarchysep: yes)."""
    yield from _serve(servers.Cyrus(separator="/"))


@pytest.fixture(scope="session")
def cyrus_dot() -> Iterator[servers.Cyrus]:
    """Cyrus IMAP with its traditional '.' separator (unixhierarchysep: no)."""
    yield from _serve(servers.Cyrus(separator="."))


@pytest.fixture(scope="session")
def courier() -> Iterator[servers.Courier]:
    """Courier-IMAP: separator '.', every personal folder under `INBOX.`."""
    yield from _serve(servers.Courier())


@pytest.fixture(scope="session")
def pymap_server() -> Iterator[servers.Pymap]:
    yield from _serve(servers.Pymap())


@pytest.fixture(scope="session")
def dovecot_condstore() -> Iterator[Dovecot]:
    """Dovecot like Gmail: CONDSTORE without QRESYNC."""
    yield from _serve(servers.dovecot_variant("condstore-only"))


@pytest.fixture(scope="session")
def dovecot_uidplus() -> Iterator[Dovecot]:
    """Dovecot like Courier or Outlook: UIDPLUS, no MOVE, CONDSTORE, QRESYNC, LIST-STATUS."""
    yield from _serve(servers.dovecot_variant("uidplus-only"))


@dataclass(frozen=True)
class Account:
    server: servers.Server
    user: str
    password: str

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def client(self):  # type: ignore[no-untyped-def]
        """A plain imapclient connection, for tests to act as 'another mail client'."""
        import imapclient

        c = imapclient.IMAPClient(self.host, self.port, ssl=False, timeout=30)
        c.login(self.user, self.password)
        return c


def _new_account(server: servers.Server) -> Account:
    user = f"u{next(_user_ids)}"
    server.add_user(user, "pw-" + user)
    return Account(server, user, "pw-" + user)


@pytest.fixture
def account_on() -> Callable[[servers.Server], Account]:
    """A fresh user on any server (the matrix's tests pick the server themselves)."""
    return _new_account


@pytest.fixture
def account(dovecot: Dovecot) -> Account:
    return _new_account(dovecot)


@pytest.fixture
def make_account(dovecot: Dovecot) -> Callable[[], Account]:
    """For tests that need several fresh users (one per scenario)."""
    return lambda: _new_account(dovecot)


@pytest.fixture
def basic_account(dovecot_basic: Dovecot) -> Account:
    return _new_account(dovecot_basic)


@pytest.fixture
def uidplus_account(dovecot_uidplus: Dovecot) -> Account:
    return _new_account(dovecot_uidplus)


@pytest.fixture
def quota_account(dovecot_quota: Dovecot) -> Account:
    return _new_account(dovecot_quota)


@pytest.fixture
def make_quota_account(dovecot_quota: Dovecot) -> Callable[[], Account]:
    """For tests that need several fresh users on the quota Dovecot."""
    return lambda: _new_account(dovecot_quota)


class SettleClock:
    """The settle clock of every mirrorsync run a test makes (see
    `mirrorsync.dirstamp.settle_now`): `advance()` makes every stamp and config file
    taken so far count as settled, as if the test had waited, without sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self.skew = 0.0

    def advance(self, seconds: float = 10.0) -> None:
        from mirrorsync.dirstamp import CLOCK_SKEW_ENV

        self.skew += seconds
        self._monkeypatch.setenv(CLOCK_SKEW_ENV, repr(self.skew))


@pytest.fixture
def settle_clock(monkeypatch: pytest.MonkeyPatch) -> SettleClock:
    return SettleClock(monkeypatch)


@pytest.fixture(scope="module")
def fault_proxy(dovecot: Dovecot) -> Iterator[Any]:
    """A fault-injecting proxy (tests/faultproxy.py) in front of the session's Dovecot;
    `fault_proxy.arm(...)` sets the fault (or a rewrite) of the runs that follow."""
    from tests.faultproxy import FaultProxy

    p = FaultProxy(dovecot.host, dovecot.port)
    yield p
    p.close()


@pytest.fixture(scope="session")
def oauth_provider() -> Iterator[Any]:
    """The local OAuth2 provider (tests/oauthprovider.py) the sign-in tests use."""
    from tests.oauthprovider import Provider

    provider = Provider().start()
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def dovecot_oauth(oauth_provider: Any) -> Iterator[Dovecot]:
    """A Dovecot whose oauth2 passdb asks the local provider about each token
    (XOAUTH2, OAUTHBEARER); passwords work as on the others."""
    server = Dovecot(oauth2_introspection=oauth_provider.url + "/introspect").start()
    yield server
    server.cleanup()


@pytest.fixture
def oauth_account(dovecot_oauth: Dovecot) -> Account:
    return _new_account(dovecot_oauth)
