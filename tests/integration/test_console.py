"""The operator console in-process (httpx.ASGITransport over the real app and a real store):
sign-in, sessions, CSRF, security headers, escaping, redirects, the path prefix, the actions.

The same pages in a real browser: tests/process/test_console_browser.py.
"""

from __future__ import annotations

import html
import json
import re
import time
from typing import Any

import httpx
import pytest

from app.config import parse_api_keys
from app.console import session as sessions
from app.console.session import LoginThrottle
from app.main import create_app
from app.simulator.process import SimulatorProcess
from tests.inprocess import InProcessRelay, WithState, run
from tests.relay import ADMIN_KEY, INGEST_KEY, RELAY_KEYS

HOSTILE = "<img src=x onerror=alert(1)>"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


async def sign_in(relay: InProcessRelay, *, client: httpx.AsyncClient | None = None) -> str:
    """Sign `client` (the relay's own by default) in with the admin key; answer its CSRF token."""
    client = client or relay.client
    answer = await client.post("/console/login", data={"key": ADMIN_KEY})
    assert answer.status_code == 303, answer.text
    page = await client.get("/console")
    assert page.status_code == 200
    return csrf_of(page.text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def other_client(relay: InProcessRelay) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=WithState(relay.app, relay.state))
    return httpx.AsyncClient(transport=transport, base_url="http://relay")


async def dead_letter(relay: InProcessRelay, sim: SimulatorProcess, company: str) -> str:
    sim.configure(invalid_company_ids=[company])
    answer = await relay.post_company(company, {"plan": "pro", "note": HOSTILE})
    delivery_id: str = answer.json()["id"]
    await relay.wait_for(delivery_id, "dead")
    return delivery_id


# sign-in -----------------------------------------------------------------------------------
def test_only_an_admin_key_signs_in_and_the_cookie_is_scoped_and_strict(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            first = await relay.client.get("/console")
            assert first.status_code == 303
            assert first.headers["location"] == "/console/login"
            ingest = await relay.client.post("/console/login", data={"key": INGEST_KEY})
            unknown = await relay.client.post("/console/login", data={"key": "no-such-key"})
            assert ingest.status_code == unknown.status_code == 401
            # The same words for both: which keys exist is never revealed.
            assert re.findall(r'id="error">([^<]*)<', ingest.text) == re.findall(
                r'id="error">([^<]*)<', unknown.text
            )
            assert "set-cookie" not in ingest.headers
            assert (await relay.client.get("/console")).status_code == 303

            good = await relay.client.post("/console/login", data={"key": ADMIN_KEY})
            assert good.status_code == 303 and good.headers["location"] == "/console"
            cookie = good.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie
            assert "Path=/console" in cookie and "Max-Age=28800" in cookie
            assert "Secure" not in cookie  # RELAY_PUBLIC_URL is not https here
            assert ADMIN_KEY not in cookie
            page = await relay.client.get("/console")
            assert page.status_code == 200 and ">ops<" in page.text

    run(main())


def test_the_cookie_is_secure_when_the_public_url_is_https(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url, relay_public_url="https://relay.example") as relay:
            good = await relay.client.post("/console/login", data={"key": ADMIN_KEY})
            assert "Secure" in good.headers["set-cookie"]

    run(main())


def test_sign_out_ends_the_session_and_needs_the_csrf_token(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            token = await sign_in(relay)
            refused = await relay.client.post("/console/logout", data={})
            assert refused.status_code == 403
            assert (await relay.client.get("/console")).status_code == 200
            out = await relay.client.post("/console/logout", data={"csrf": token})
            assert out.status_code == 303 and out.headers["location"] == "/console/login"
            assert "Max-Age=0" in out.headers["set-cookie"]
            assert (await relay.client.get("/console")).status_code == 303

    run(main())


def test_wrong_keys_slow_an_address_down_even_for_the_right_key(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            for _ in range(5):
                answer = await relay.client.post("/console/login", data={"key": "guess"})
                assert answer.status_code == 401
            held = await relay.client.post("/console/login", data={"key": ADMIN_KEY})
            assert held.status_code == 429
            assert 1 <= int(held.headers["retry-after"]) <= 2
            assert "set-cookie" not in held.headers

    run(main())


def test_the_throttle_grows_and_forgets() -> None:
    throttle = LoginThrottle(free=2, first=1.0, longest=4.0, forget_after=100.0)
    for _ in range(2):
        throttle.failed("a", now=0.0)
    assert throttle.wait("a", now=0.0) == 1.0
    throttle.failed("a", now=1.0)
    assert throttle.wait("a", now=1.0) == 2.0
    for _ in range(5):
        throttle.failed("a", now=2.0)
    assert throttle.wait("a", now=2.0) == 4.0  # the longest
    assert throttle.wait("b", now=2.0) == 0.0  # per address
    assert throttle.wait("a", now=200.0) == 0.0  # forgotten
    throttle.failed("a", now=300.0)
    throttle.succeeded("a")
    assert throttle.wait("a", now=300.0) == 0.0


def test_a_session_is_refused_when_forged_expired_or_its_key_is_gone() -> None:
    keys = parse_api_keys(RELAY_KEYS)
    admin = next(k for k in keys if k.role == "admin")
    secret = b"s" * 32
    value, session = sessions.issue(secret, admin, hours=1, now=1000.0)
    assert sessions.verify(secret, value, keys, now=1001.0) == session
    assert sessions.verify(secret, value, keys, now=1000.0 + 3601) is None  # expired
    assert sessions.verify(b"t" * 32, value, keys, now=1001.0) is None  # another secret
    payload, _, signature = value.partition(".")
    assert sessions.verify(secret, payload + "." + signature[:-2] + "AA", keys, now=1001) is None
    assert sessions.verify(secret, "garbage", keys, now=1001.0) is None
    others = parse_api_keys(f"svc:ingest:{INGEST_KEY},ops:ingest:{ADMIN_KEY}")
    assert sessions.verify(secret, value, others, now=1001.0) is None  # no longer admin
    assert sessions.verify(secret, value, parse_api_keys("x:admin:k"), now=1001.0) is None


def test_rotating_a_key_changes_the_derived_secret(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as one:
            first = sessions.session_secret(one.settings)
        async with InProcessRelay(sqlite_url, relay_api_keys=RELAY_KEYS + ",new:admin:k2") as two:
            assert sessions.session_secret(two.settings) != first
        async with InProcessRelay(sqlite_url) as again:
            assert sessions.session_secret(again.settings) == first  # every replica agrees

    run(main())


# headers, escaping, prefix, switch ------------------------------------------------------
def test_every_console_answer_carries_the_security_headers(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            answers = [
                await relay.client.get("/console"),  # a redirect
                await relay.client.get("/console/login"),
                await relay.client.post("/console/login", data={"key": "x"}),
            ]
            await sign_in(relay)
            for path in (
                "/console",
                "/console/deliveries",
                "/console/dead-letters",
                "/console/jobs",
                "/console/backfills",
                "/console/properties",
                "/console/erasures",
                "/console/suppressions",
                "/console/static/console.css",
                "/console/no-such-page",
                "/console/deliveries?status=lost",
                "/console/deliveries?since=yesterday",
            ):
                answers.append(await relay.client.get(path))
            for answer in answers:
                assert answer.headers["content-security-policy"] == CSP, answer.url
                assert "unsafe-inline" not in answer.headers["content-security-policy"]
                assert answer.headers["referrer-policy"] == "no-referrer"
                assert answer.headers["x-content-type-options"] == "nosniff"
                assert answer.headers["cache-control"] == "no-store"
            statuses = [a.status_code for a in answers[3:]]
            assert statuses == [200, 200, 200, 200, 200, 200, 200, 200, 200, 404, 400, 400]
            assert "status must be one of" in answers[-2].text
            assert "since must be a time" in answers[-1].text

    run(main())


def test_the_console_is_not_in_the_api_document() -> None:
    document = create_app().openapi()
    assert not [path for path in document["paths"] if path.startswith("/console")]


def test_the_console_can_be_switched_off(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url, relay_console="off") as relay:
            assert (await relay.client.get("/console/login")).status_code == 404
            signed = await relay.client.post("/console/login", data={"key": ADMIN_KEY})
            assert signed.status_code == 404 and "set-cookie" not in signed.headers
            assert (await relay.get("/status", key=ADMIN_KEY)).status_code == 200

    run(main())


def test_the_console_works_behind_a_path_prefix(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            transport = httpx.ASGITransport(
                app=WithState(relay.app, relay.state), root_path="/relay"
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
                first = await client.get("/relay/console")
                assert first.headers["location"] == "/relay/console/login"
                login = await client.get("/relay/console/login")
                assert 'action="/relay/console/login"' in login.text
                assert 'href="/relay/console/static/console.css"' in login.text
                signed = await client.post("/relay/console/login", data={"key": ADMIN_KEY})
                assert signed.headers["location"] == "/relay/console"
                assert "Path=/relay/console" in signed.headers["set-cookie"]
                page = await client.get("/relay/console")
                assert page.status_code == 200
                links = re.findall(r'(?:href|action)="([^"]+)"', page.text)
                assert links and all(link.startswith("/relay/console") for link in links)
                css = await client.get("/relay/console/static/console.css")
                assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")

    run(main())


def test_hostile_values_show_as_text(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            posted = await relay.post_company(HOSTILE, {HOSTILE: HOSTILE, "plan": '"><script>'})
            delivery_id = posted.json()["id"]
            await sign_in(relay)
            for path in (
                "/console/deliveries",
                f"/console/deliveries/{delivery_id}",
                f"/console/deliveries?company_id={HOSTILE}",
            ):
                page = await relay.client.get(path)
                assert page.status_code == 200
                assert "<img" not in page.text and "<script>" not in page.text
                assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
            error = await relay.client.get(f"/console/deliveries/{HOSTILE}")
            assert error.status_code == 404 and "<img" not in error.text

    run(main())


# actions -----------------------------------------------------------------------------------
def test_a_post_without_this_sessions_csrf_token_is_refused_and_changes_nothing(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            delivery_id = await dead_letter(relay, sim, "csrf-co")
            token = await sign_in(relay)
            async with other_client(relay) as other:
                other_token = await sign_in(relay, client=other)
            assert other_token != token
            replay = f"/console/deliveries/{delivery_id}/replay"
            for data in ({}, {"csrf": other_token}, {"csrf": "x" * len(token)}):
                answer = await relay.client.post(replay, data=data)
                assert answer.status_code == 403, data
            purged = await relay.client.post("/console/dead-letters/purge", data={})
            assert purged.status_code == 403
            # GET never changes state.
            assert (await relay.client.get(replay)).status_code in (404, 405)
            assert (await relay.store.deliveries.get(delivery_id)).status == "dead"  # type: ignore[union-attr]
            assert (await relay.store.deliveries.stats()).dead == 1

    run(main())


def test_replay_from_the_console_reaches_userpilot(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            delivery_id = await dead_letter(relay, sim, "replay-co")
            token = await sign_in(relay)
            page = await relay.client.get(f"/console/deliveries/{delivery_id}")
            assert 'id="replay"' in page.text and "400" in page.text
            sim.configure(invalid_company_ids=[])
            answer = await relay.client.post(
                f"/console/deliveries/{delivery_id}/replay", data={"csrf": token}
            )
            assert answer.status_code == 303
            assert answer.headers["location"] == f"/console/deliveries/{delivery_id}?done=replayed"
            await relay.wait_for(delivery_id, "delivered")
            assert (sim.company("replay-co") or {}).get("plan") == "pro"
            again = await relay.client.post(
                f"/console/deliveries/{delivery_id}/replay", data={"csrf": token}
            )
            assert again.status_code == 409

    run(main())


def test_replay_all_and_purge_all_confirm_the_count_first(
    database_url: str, sim: SimulatorProcess
) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url, endpoint=sim.url) as relay:
            dead = [await dead_letter(relay, sim, "many-co") for _ in range(3)]
            other = await dead_letter(relay, sim, "other-co")
            token = await sign_in(relay)
            listing = await relay.client.get("/console/dead-letters?company_id=many-co")
            assert 'id="matching">3<' in listing.text
            confirm = await relay.client.get(
                "/console/dead-letters/confirm?action=replay&company_id=many-co"
            )
            assert 'id="matching">3<' in confirm.text and csrf_of(confirm.text) == token
            sim.configure(invalid_company_ids=["other-co"])
            done = await relay.client.post(
                "/console/dead-letters/replay", data={"csrf": token, "company_id": "many-co"}
            )
            assert done.status_code == 303
            assert (
                "done=replayed_all" in done.headers["location"]
                and "n=3" in done.headers["location"]
            )
            for delivery_id in dead:
                await relay.wait_for(delivery_id, "delivered")
            purged = await relay.client.post(
                "/console/dead-letters/purge", data={"csrf": token, "company_id": ""}
            )
            assert "n=1" in purged.headers["location"]
            assert await relay.store.deliveries.get(other) is None
            shown = await relay.client.get(purged.headers["location"])
            assert "Purged 1 dead letters." in shown.text

    run(main())


def test_the_overview_shows_the_numbers_of_get_status(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:  # Userpilot unreachable: all queued
            for i in range(4):
                await relay.post_company(f"ov-{i}", {"n": i})
            await sign_in(relay)
            status: dict[str, Any] = (await relay.get("/status", key=ADMIN_KEY)).json()
            page = (await relay.client.get("/console")).text
            shown = {
                name: int(re.search(rf'id="{name}">(?:<a[^>]*>)?(\d+)', page).group(1))  # type: ignore[union-attr]
                for name in ("queued", "delivering", "dead")
            }
            queue = status["queue"]
            assert shown["dead"] == queue["dead"] == 0
            assert shown["queued"] + shown["delivering"] == queue["queued"] + queue["delivering"]
            assert shown["queued"] + shown["delivering"] == 4
            assert 'id="rate-chart"' in page and "<script" not in page

    run(main())


def test_the_deliveries_page_searches_and_pages(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            for i in range(55):
                await relay.post_company("page-co", {"i": i})
            await relay.post_company("lone-co", {"i": -1})
            await sign_in(relay)
            lone = await relay.client.get("/console/deliveries?company_id=lone-co&status=")
            assert lone.text.count('class="company">lone-co<') == 1
            assert "page-co" not in lone.text
            first = await relay.client.get("/console/deliveries?company_id=page-co&caller=svc")
            assert first.text.count('class="company">page-co<') == 50
            older = re.search(r'href="([^"]+)" id="next"', first.text)
            assert older, first.text
            second = await relay.client.get(older.group(1).replace("&amp;", "&"))
            assert second.text.count('class="company">page-co<') == 5
            assert 'id="next"' not in second.text
            nobody = await relay.client.get("/console/deliveries?caller=nobody")
            assert "Nothing matches." in nobody.text
            later = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 120))
            future = await relay.client.get(f"/console/deliveries?since={later}")
            assert "Nothing matches." in future.text

    run(main())


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/console/login", b"\xff\xfe", 400),
        ("/console/login", b"key=" + b"a" * 70_000, 413),
    ],
)
def test_a_bad_form_gets_a_clear_error(
    sqlite_url: str, path: str, data: bytes, status: int
) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            headers = {"content-type": "application/x-www-form-urlencoded"}
            answer = await relay.client.post(path, content=data, headers=headers)
            assert answer.status_code == status
            assert "set-cookie" not in answer.headers
            json_body = await relay.client.post(path, json={"key": ADMIN_KEY})
            assert json_body.status_code == 415

    run(main())


def test_the_other_pages_render_with_data(sqlite_url: str, sim: SimulatorProcess) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url, endpoint=sim.url) as relay:
            answer = await relay.post_company("props-co", {"seats": 3, "plan": "pro"})
            await relay.wait_for(answer.json()["id"], "delivered")
            await relay.post_company("props-co", {"seats": "three"})
            await sign_in(relay)
            props = await relay.client.get("/console/properties")
            assert 'id="conflicts">1<' in props.text and 'class="conflict"' in props.text
            overview = await relay.client.get("/console")
            total = int(re.search(r'id="rate-total">(\d+)<', overview.text).group(1))  # type: ignore[union-attr]
            assert total >= 1
            assert (await relay.client.get("/console/jobs")).status_code == 200
            assert (await relay.client.get("/console/backfills")).status_code == 200
            bad = await relay.client.get("/console/jobs?before=nope")
            assert bad.status_code == 400

    run(main())


# erasures and suppressions ------------------------------------------------------------------
def hidden_fields(page: str) -> dict[str, str]:
    """The hidden fields of a confirmation page's form, as the browser would send them."""
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', page)
        if name != "csrf"
    }


async def erasures_in(relay: InProcessRelay) -> list[str]:
    return [e.id for e in await relay.store.erasures.page(status=None, before=None, limit=100)]


def test_an_erasure_is_created_only_by_the_confirming_post(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            token = await sign_in(relay)
            empty = await relay.client.get("/console/erasures")
            assert empty.status_code == 200 and "No erasure." in empty.text
            typed = "gone-co-1\r\n\r\n  gone-co-2  \r\ngone-co-1\r\n   \r\ngone-co-3\r\n"
            review = await relay.client.post(
                "/console/erasures/review",
                data={"csrf": token, "company_ids": typed, "reason": "GDPR request 42"},
            )
            assert review.status_code == 200
            assert 'id="count">3<' in review.text and "Erase <span" in review.text
            assert "This cannot be undone" in review.text and "GDPR request 42" in review.text
            assert await erasures_in(relay) == []  # the first POST creates nothing
            carried = hidden_fields(review.text)
            # Kept as typed but for the line ending: the spaced id is an id of its own.
            assert carried["company_ids"].split("\n") == ["gone-co-1", "  gone-co-2  ", "gone-co-3"]
            # As a browser sends the hidden field back: its line breaks as CR LF.
            carried["company_ids"] = carried["company_ids"].replace("\n", "\r\n")

            created = await relay.client.post(
                "/console/erasures", data={"csrf": csrf_of(review.text), **carried}
            )
            assert created.status_code == 303
            location = created.headers["location"]
            found = re.fullmatch(r"/console/erasures/(er_[0-9]+_[0-9a-f]+)\?done=started", location)
            assert found, location
            erasure_id = found.group(1)
            assert await erasures_in(relay) == [erasure_id]
            stored = await relay.store.erasures.get(erasure_id)
            assert stored is not None and stored.companies == 3
            assert stored.requested_by == "ops" and stored.reason == "GDPR request 42"

            detail = await relay.client.get(location)
            assert detail.status_code == 200 and "Erasure started" in detail.text
            assert 'id="companies">3<' in detail.text and "GDPR request 42" in detail.text
            assert "gone-co" not in detail.text  # counted, never listed
            listing = await relay.client.get("/console/erasures")
            assert f'href="/console/erasures/{erasure_id}"' in listing.text
            assert "gone-co" not in listing.text
            running = await relay.client.get("/console/erasures?status=running")
            assert erasure_id in running.text
            failed = await relay.client.get("/console/erasures?status=failed")
            assert erasure_id not in failed.text and "No erasure failed." in failed.text
            bad = await relay.client.get("/console/erasures?status=lost")
            assert bad.status_code == 400 and "status must be one of" in bad.text
            missing = await relay.client.get("/console/erasures/er_0_nope")
            assert missing.status_code == 404
            for company in ("gone-co-1", "  gone-co-2  ", "gone-co-3"):
                suppression = await relay.store.erasures.suppression(company)
                assert suppression is not None and suppression[1] == erasure_id
            assert await relay.store.erasures.suppression("gone-co-2") is None

    run(main())


@pytest.mark.parametrize(
    ("ids", "reason", "message"),
    [
        ("\n  \n", "a reason", "Enter at least one company id"),
        ("\n".join(f"c{i}" for i in range(10_001)), "a reason", "At most 10,000 companies"),
        ("acme", "   ", "Enter a reason"),
        ("acme", "r" * 501, "The reason must be at most 500 characters"),
        ("acme\n" + "x" * 256, "a reason", "Company id number 2 must be at most 255 characters"),
        ("acme\na\x00b", "a reason", "Company id number 2 must not contain control characters"),
        ("acme\r\nb\rc", "a reason", "Company id number 2 must not contain control characters"),
    ],
)
def test_bad_erasure_input_shows_the_form_again_and_creates_nothing(
    database_url: str, ids: str, reason: str, message: str
) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            token = await sign_in(relay)
            for path in ("/console/erasures/review", "/console/erasures"):
                data = {"csrf": token, "company_ids": ids, "reason": reason}
                answer = await relay.client.post(path, data=data)
                assert answer.status_code == 400, path
                assert message in answer.text, answer.text[-2000:]
                assert 'id="company_ids"' in answer.text  # the form, filled as it was sent
                assert "This cannot be undone" not in answer.text
            assert await erasures_in(relay) == []
            assert (await relay.get("/suppressions/acme", key=ADMIN_KEY)).json()[
                "suppressed"
            ] is False

    run(main())


def test_erasure_and_lift_posts_without_the_csrf_token_are_refused(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            token = await sign_in(relay)
            async with other_client(relay) as other:
                other_token = await sign_in(relay, client=other)
            fields = {"company_ids": "csrf-co", "reason": "test"}
            for data in ({}, {"csrf": other_token}, {"csrf": "x" * len(token)}):
                for path in ("/console/erasures/review", "/console/erasures"):
                    answer = await relay.client.post(path, data={**fields, **data})
                    assert answer.status_code == 403, (path, data)
            assert await erasures_in(relay) == []
            assert (await relay.client.get("/console/erasures")).status_code == 200

            await relay.store.erasures.create(["kept-co"], reason="test", by="ops")
            for data in ({}, {"csrf": other_token}):
                lift = await relay.client.post(
                    "/console/suppressions/lift", data={"company_id": "kept-co", **data}
                )
                assert lift.status_code == 403
            # GET never changes state.
            assert (await relay.client.get("/console/suppressions/lift")).status_code in (404, 405)
            assert await relay.store.erasures.suppression("kept-co") is not None

    run(main())


def test_hostile_erasure_values_show_as_text(database_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            token = await sign_in(relay)
            data = {"csrf": token, "company_ids": HOSTILE + "\nplain-co", "reason": HOSTILE}
            review = await relay.client.post("/console/erasures/review", data=data)
            bad = await relay.client.post("/console/erasures/review", data={**data, "reason": ""})
            assert bad.status_code == 400
            created = await relay.client.post(
                "/console/erasures", data={"csrf": token, **hidden_fields(review.text)}
            )
            assert created.status_code == 303
            stored = await relay.store.erasures.get(
                created.headers["location"].split("/")[-1].split("?")[0]
            )
            assert stored is not None and stored.companies == 2 and stored.reason == HOSTILE
            pages = [
                review,
                bad,
                await relay.client.get(created.headers["location"]),
                await relay.client.get("/console/erasures"),
                await relay.client.get("/console/suppressions", params={"company_id": HOSTILE}),
                await relay.client.get(
                    "/console/suppressions/confirm", params={"company_id": HOSTILE}
                ),
            ]
            for page in pages:
                assert page.status_code in (200, 400)
                assert "<img" not in page.text
                assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
            assert 'id="by-erasure"' in pages[4].text

    run(main())


def test_a_suppression_is_looked_up_and_lifted_after_a_confirmation(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with InProcessRelay(database_url) as relay:
            erasure = await relay.store.erasures.create(["back-co"], reason="left", by="ops")
            token = await sign_in(relay)
            unknown = await relay.client.get("/console/suppressions?company_id=never-erased")
            assert unknown.status_code == 200 and "not suppressed" in unknown.text
            assert 'id="lift"' not in unknown.text
            nothing = await relay.client.get("/console/suppressions")
            assert nothing.status_code == 200 and 'id="suppressed"' not in nothing.text

            page = await relay.client.get("/console/suppressions?company_id=back-co")
            assert page.status_code == 200
            assert '<span class="badge failed">suppressed</span>' in page.text
            assert f'href="/console/erasures/{erasure.id}"' in page.text
            confirm = await relay.client.get("/console/suppressions/confirm?company_id=back-co")
            assert confirm.status_code == 200 and "Lift the suppression?" in confirm.text
            assert await relay.store.erasures.suppression("back-co") is not None  # asked only

            lifted = await relay.client.post(
                "/console/suppressions/lift", data={"csrf": token, "company_id": "back-co"}
            )
            assert lifted.status_code == 303
            assert (
                lifted.headers["location"] == "/console/suppressions?company_id=back-co&done=lifted"
            )
            shown = await relay.client.get(lifted.headers["location"])
            assert "Suppression lifted" in shown.text and "not suppressed" in shown.text
            api = await relay.get("/suppressions/back-co", key=ADMIN_KEY)
            assert api.json()["suppressed"] is False
            again = await relay.client.post(
                "/console/suppressions/lift", data={"csrf": token, "company_id": "back-co"}
            )
            assert again.status_code == 404 and "not suppressed" in again.text
            too_long = await relay.client.get("/console/suppressions?company_id=" + "x" * 1025)
            assert too_long.status_code == 400

    run(main())
    logged = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if '"suppression lifted"' in line
    ]
    assert [(line["caller"], line["via"]) for line in logged] == [("ops", "console")]
    assert "back-co" not in json.dumps(logged)


def test_the_erasures_page_pages_newest_first(sqlite_url: str) -> None:
    async def main() -> None:
        async with InProcessRelay(sqlite_url) as relay:
            made = [
                (await relay.store.erasures.create([f"p-{i}"], reason=f"r{i}", by="ops")).id
                for i in range(51)
            ]
            await sign_in(relay)
            first = await relay.client.get("/console/erasures")
            shown = re.findall(r'class="erasure" href="/console/erasures/([^"]+)"', first.text)
            assert shown == sorted(made, reverse=True)[:50]
            older = re.search(r'href="([^"]+)" id="next"', first.text)
            assert older, first.text
            second = await relay.client.get(html.unescape(older.group(1)))
            rest = re.findall(r'class="erasure" href="/console/erasures/([^"]+)"', second.text)
            assert rest == sorted(made, reverse=True)[50:]
            assert 'id="next"' not in second.text

    run(main())
