"""GET /admin: the token form, signing in with the printed URL or the form, and the dashboard page."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.handlers.admin_client import bearer, cookies_of, sign_in_with_cookie


async def get(base_url: str, path: str, **kwargs):
    return await AsyncHTTPClient().fetch(base_url + path, raise_error=False, follow_redirects=False, **kwargs)


@pytest.mark.gen_test
async def test_without_a_token_the_page_is_only_the_token_form(http_server, base_url):
    response = await get(base_url, "/admin")
    page = response.body.decode()
    assert response.code == 200 and '<form method="post" action="/admin">' in page
    assert "Knowledge base" not in page and "js/main.js" not in page
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.gen_test
async def test_a_wrong_token_is_refused(http_server, base_url):
    response = await get(base_url, "/admin?token=wrong")
    assert response.code == 401 and "not valid" in response.body.decode()
    assert "llm_admin" not in cookies_of(response)


@pytest.mark.gen_test
async def test_the_printed_url_sets_a_strict_httponly_signed_cookie_and_redirects(http_server, base_url, services):
    response = await get(base_url, f"/admin?token={services.admin_token}")
    assert response.code == 303 and response.headers["Location"] == "/admin"
    header = next(h for h in response.headers.get_list("Set-Cookie") if h.startswith("llm_admin="))
    assert "HttpOnly" in header and "SameSite=Strict" in header and services.admin_token not in header
    client = await sign_in_with_cookie(base_url, services.admin_token)
    page = await get(base_url, "/admin", headers=client.headers)
    assert page.code == 200 and "Knowledge base" in page.body.decode() and "js/main.js" in page.body.decode()


@pytest.mark.gen_test
async def test_the_token_form_signs_in_and_refuses_other_sites(http_server, base_url, services):
    # The form carries the secret itself, so it needs no XSRF token; a post from another site's page is refused.
    body = urlencode({"token": services.admin_token})
    response = await get(base_url, "/admin", method="POST", body=body, headers={"Origin": base_url})
    assert response.code == 303 and "llm_admin" in cookies_of(response)
    foreign = await get(base_url, "/admin", method="POST", body=body, headers={"Origin": "https://evil.example"})
    assert foreign.code == 403 and "llm_admin" not in cookies_of(foreign)
    assert "text/html" in foreign.headers["Content-Type"] and "Cross-site" in foreign.body.decode()


@pytest.mark.gen_test
async def test_a_cookie_signed_for_another_token_is_refused(http_server, base_url, services):
    client = await sign_in_with_cookie(base_url, services.admin_token)
    services.admin_token = "a-new-token"  # as after a restart that generated a new one
    page = await get(base_url, "/admin", headers=client.headers)
    assert "Knowledge base" not in page.body.decode()


@pytest.mark.gen_test
async def test_the_token_never_reaches_the_access_log(http_server, base_url, services, caplog):
    caplog.set_level(logging.INFO, logger="tornado.access")
    await get(base_url, f"/admin?token={services.admin_token}")
    assert "GET /admin" in caplog.text and services.admin_token not in caplog.text


@pytest.mark.gen_test
async def test_static_files_are_served_locally(http_server, base_url):
    for name in ("js/main.js", "js/live-log.js", "admin.css"):
        response = await get(base_url, f"/static/{name}")
        assert response.code == 200 and len(response.body) > 500
        assert response.headers["X-Request-Id"].startswith("req_")
    missing = await get(base_url, "/static/nothing.js")
    assert missing.code == 404 and json.loads(missing.body)["error"]["type"] == "not_found_error"


@pytest.mark.gen_test
async def test_the_dashboards_endpoint_filters_list_every_endpoint_of_the_table(http_server, base_url, services):
    from llmserver.endpoints import ENDPOINTS

    page = (await bearer(base_url, services.admin_token).fetch("GET", "/admin")).body.decode()
    for endpoint in ENDPOINTS:
        assert page.count(f'<option value="{endpoint.name}"') == 2  # the live log's filter and the history's
