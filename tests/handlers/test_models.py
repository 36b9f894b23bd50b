"""GET /v1/models, /healthz, unknown paths and methods."""

from __future__ import annotations

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.client import json_of


async def fetch(base_url: str, path: str, **kwargs):
    return await AsyncHTTPClient().fetch(base_url + path, raise_error=False, **kwargs)


@pytest.mark.gen_test
async def test_models_lists_the_upstreams_models(http_server, base_url, fake_upstream):
    for path in ("/v1/models", "/models"):
        response = await fetch(base_url, path)
        assert response.code == 200
        assert json_of(response)["data"][0]["id"] == "fake-model"


@pytest.mark.settings(api_key=None)
@pytest.mark.gen_test
async def test_models_follows_the_key_rules(http_server, base_url, fake_upstream):
    assert (await fetch(base_url, "/v1/models")).code == 401
    response = await fetch(base_url, "/v1/models", headers={"Authorization": "Bearer sk-caller"})
    assert response.code == 200 and fake_upstream.last.headers["Authorization"] == "Bearer sk-caller"


@pytest.mark.settings(api_keys=("client-key",))
@pytest.mark.gen_test
async def test_models_requires_one_of_the_api_keys(http_server, base_url):
    assert (await fetch(base_url, "/v1/models", headers={"Authorization": "Bearer wrong"})).code == 401
    assert (await fetch(base_url, "/v1/models", headers={"Authorization": "Bearer client-key"})).code == 200


@pytest.mark.settings(upstream="offline")
@pytest.mark.gen_test
async def test_offline_models_lists_the_offline_model(http_server, base_url):
    response = await fetch(base_url, "/v1/models")
    assert [m["id"] for m in json_of(response)["data"]] == ["offline"]


@pytest.mark.gen_test
async def test_healthz_does_not_call_the_upstream(http_server, base_url, fake_upstream):
    response = await fetch(base_url, "/healthz")
    assert response.code == 200 and json_of(response)["status"] == "ok"
    assert fake_upstream.requests == []


@pytest.mark.gen_test
async def test_unknown_paths_and_methods_get_the_error_shape(http_server, base_url):
    missing = await fetch(base_url, "/nothing/here")
    assert missing.code == 404
    assert json_of(missing)["error"]["type"] == "not_found_error"
    wrong_method = await fetch(base_url, "/chat/completions")
    assert wrong_method.code == 405
    assert set(json_of(wrong_method)["error"]) == {"message", "type", "param", "code"}
