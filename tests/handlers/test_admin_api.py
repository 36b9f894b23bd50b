"""The admin JSON API: every route, every access case, and bad input that changes nothing stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.audio_files import encode, tone
from tests.client import stream
from tests.conftest import files_in
from tests.handlers.admin_client import AdminClient, bearer, multipart, sign_in_with_cookie

ROUTES = [
    ("GET", "/admin/api/status"),
    ("GET", "/admin/api/knowledge"),
    ("POST", "/admin/api/knowledge"),
    ("GET", "/admin/api/retrieval?q=agora"),
    ("GET", "/admin/api/knowledge.json"),
    ("PUT", "/admin/api/knowledge.json"),
    ("GET", "/admin/api/knowledge/connect-agora"),
    ("PUT", "/admin/api/knowledge/connect-agora"),
    ("DELETE", "/admin/api/knowledge/connect-agora"),
    ("GET", "/admin/api/audio"),
    ("POST", "/admin/api/audio"),
    ("GET", "/admin/api/audio/file.wav"),
    ("POST", "/admin/api/audio/file/activate"),
    ("DELETE", "/admin/api/audio/file"),
]
CHANGES = [(m, p) for m, p in ROUTES if m != "GET"]


def stored(settings) -> dict[str, bytes]:
    return {"knowledge.json": Path(settings.knowledge_path).read_bytes(), **files_in(settings.audio_path)}


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.gen_test
async def test_without_a_token_every_route_is_401_and_nothing_changes(http_server, base_url, settings, method, path):
    before = stored(settings)
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Cookie": "llm_admin=forged"}):
        response = await AdminClient(base_url, headers).fetch(method, path, {"id": "x", "content": "y"})
        assert response.code == 401, (headers, response.code)
        assert json.loads(response.body)["error"]["code"] == "admin_token"
    assert stored(settings) == before


@pytest.mark.parametrize("method,path", CHANGES)
@pytest.mark.gen_test
async def test_a_cookie_without_the_xsrf_token_cannot_change_anything(
    http_server, base_url, services, settings, method, path
):
    client = await sign_in_with_cookie(base_url, services.admin_token, with_xsrf=False)
    before = stored(settings)
    response = await client.fetch(method, path, {"id": "x", "content": "y"})
    assert response.code == 403
    assert "xsrf" in json.loads(response.body)["error"]["message"].lower()
    assert stored(settings) == before
    assert (await client.fetch("GET", "/admin/api/knowledge")).code == 200  # reading needs no XSRF token


@pytest.mark.gen_test
async def test_a_cookie_with_the_xsrf_token_works(http_server, base_url, services):
    client = await sign_in_with_cookie(base_url, services.admin_token)
    response = await client.fetch(
        "POST", "/admin/api/knowledge", {"id": "from-cookie", "content": "Added by a browser."}
    )
    assert response.code == 201
    assert services.knowledge_base.get("from-cookie")["content"] == "Added by a browser."


@pytest.mark.gen_test
async def test_the_xsrf_token_must_come_in_the_header(http_server, base_url, services):
    client = await sign_in_with_cookie(base_url, services.admin_token, with_xsrf=False)
    xsrf = client.headers["Cookie"].split("_xsrf=")[1].split(";")[0]
    response = await client.fetch("DELETE", f"/admin/api/knowledge/connect-agora?_xsrf={xsrf}")
    assert response.code == 403 and "X-XSRFToken" in json.loads(response.body)["error"]["message"]
    assert services.knowledge_base.get("connect-agora")


@pytest.mark.gen_test
async def test_documents_named_like_the_fixed_routes_can_be_read_and_changed(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    for doc_id in ("search", "file", "retrieval"):
        assert (await admin.fetch("POST", "/admin/api/knowledge", {"id": doc_id, "content": "odd name"})).code == 201
        read = await admin.fetch("GET", f"/admin/api/knowledge/{doc_id}")
        assert read.code == 200 and json.loads(read.body)["content"] == "odd name"
        version = services.knowledge_base.version
        update = {"content": "changed", "version": version}
        assert (await admin.fetch("PUT", f"/admin/api/knowledge/{doc_id}", update)).code == 200
        assert services.knowledge_base.get(doc_id)["content"] == "changed"
        assert (await admin.fetch("DELETE", f"/admin/api/knowledge/{doc_id}")).code == 204
    search = "/admin/api/retrieval?q=How+do+I+connect+this+server+to+Agora"
    passages = json.loads((await admin.fetch("GET", search)).body)["passages"]
    assert passages[0]["doc_id"] == "connect-agora" and passages[0]["injected"]


@pytest.mark.settings(max_body_bytes=1000, audio_max_bytes=100_000)
@pytest.mark.gen_test
async def test_oversized_bodies_are_refused_from_their_content_length(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    body, content_type = multipart({"transcript": "t", "name": "big"}, "big.pcm", b"\x00" * 300_000)
    response = await admin.fetch("POST", "/admin/api/audio", raw=body, headers={"Content-Type": content_type})
    assert response.code == 413 and "big" not in [c["name"] for c in services.audio_library.list()]
    anonymous = await AdminClient(base_url, {}).fetch("POST", "/admin/api/audio", raw=body)
    assert anonymous.code == 401  # turned away before its body is read


@pytest.mark.gen_test
async def test_completion_endpoints_need_no_cookie_or_xsrf(http_server, base_url):
    result = await stream(base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert result.response.code == 200


@pytest.mark.gen_test
async def test_knowledge_crud_with_versions_and_conflicts(http_server, base_url, services, settings):
    admin = bearer(base_url, services.admin_token)
    listing = json.loads((await admin.fetch("GET", "/admin/api/knowledge")).body)
    assert listing["version"] == services.knowledge_base.version and len(listing["documents"]) == 23
    read_at = listing["version"]

    created = await admin.fetch(
        "POST", "/admin/api/knowledge", {"id": "hours", "title": "Opening hours", "content": "9 to 5."}
    )
    assert created.code == 201 and json.loads(created.body)["id"] == "hours"
    document = json.loads((await admin.fetch("GET", "/admin/api/knowledge/hours")).body)
    assert document["title"] == "Opening hours"

    first = {**document, "content": "9 to 6 now.", "version": read_at + 1}
    assert (await admin.fetch("PUT", "/admin/api/knowledge/hours", first)).code == 200
    late = {**document, "content": "An edit made on the old copy.", "version": read_at + 1}
    conflict = await admin.fetch("PUT", "/admin/api/knowledge/hours", late)
    assert conflict.code == 409 and "changed" in json.loads(conflict.body)["error"]["message"]
    assert services.knowledge_base.get("hours")["content"] == "9 to 6 now."

    tested = json.loads((await admin.fetch("GET", "/admin/api/retrieval?q=when+are+the+opening+hours")).body)
    best = tested["passages"][0]
    assert best["id"] == "hours#1" and best["injected"] and best["relevance"] > 0

    assert (await admin.fetch("DELETE", "/admin/api/knowledge/hours")).code == 204
    assert (await admin.fetch("GET", "/admin/api/knowledge/hours")).code == 404
    saved = json.loads(Path(settings.knowledge_path).read_text())
    assert "hours" not in [d["id"] for d in saved["documents"]]


@pytest.mark.gen_test
async def test_the_retrieval_test_returns_the_best_k_passages(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    question = "/admin/api/retrieval?q=How+do+I+connect+this+server+to+Agora"
    every = json.loads((await admin.fetch("GET", question)).body)
    assert len(every["passages"]) > 3
    best_two = json.loads((await admin.fetch("GET", question + "&k=2")).body)
    assert best_two["passages"] == every["passages"][:2]
    # Only what is shown is cut: what would be injected is the same.
    assert best_two["injected_chars"] == every["injected_chars"] and best_two["budget"] == every["budget"]
    conversation = {"messages": [{"role": "user", "content": "How do I connect this server to Agora?"}]}
    posted = json.loads((await admin.fetch("POST", "/admin/api/retrieval?k=1", conversation)).body)
    assert [p["id"] for p in posted["passages"]] == [every["passages"][0]["id"]]
    many = json.loads((await admin.fetch("GET", question + "&k=1000")).body)
    assert len(many["passages"]) == len(every["passages"])


BAD_K = ["0", "-1", "two", "1.5", "1e3", "١", "10001", pytest.param("9" * 5000, id="5000-digits")]


@pytest.mark.parametrize("k", BAD_K)
@pytest.mark.gen_test
async def test_a_bad_k_is_refused(http_server, base_url, services, k):
    response = await bearer(base_url, services.admin_token).fetch("GET", f"/admin/api/retrieval?q=agora&k={k}")
    assert response.code == 400
    assert json.loads(response.body)["error"]["param"] == "k"


@pytest.mark.gen_test
async def test_export_and_import(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    exported = await admin.fetch("GET", "/admin/api/knowledge.json")
    assert "attachment" in exported.headers["Content-Disposition"]
    data = json.loads(exported.body)
    data["documents"] = data["documents"][:2]
    imported = await admin.fetch("PUT", "/admin/api/knowledge.json", data)
    assert imported.code == 200 and len(json.loads(imported.body)["documents"]) == 2
    assert len(services.knowledge_base) == 2


BAD_KNOWLEDGE = [
    ("POST", "/admin/api/knowledge", b"{not json", 400),
    ("POST", "/admin/api/knowledge", b"[1]", 400),
    ("POST", "/admin/api/knowledge", b'{"id": "x"}', 400),
    ("POST", "/admin/api/knowledge", b'{"id": "connect-agora", "content": "dup"}', 409),
    ("POST", "/admin/api/knowledge", b'{"id": "../x", "content": "bad id"}', 400),
    ("POST", "/admin/api/knowledge", b'{"id": "big", "content": "' + b"x" * 200_001 + b'"}', 413),
    ("PUT", "/admin/api/knowledge/connect-agora", b'{"content": "", "version": 1}', 400),
    ("PUT", "/admin/api/knowledge/connect-agora", b'{"content": "x", "version": "1"}', 400),
    ("PUT", "/admin/api/knowledge/connect-agora", b'{"content": "no version: it could overwrite a newer edit"}', 400),
    ("PUT", "/admin/api/knowledge/nope", b'{"content": "x", "version": 1}', 404),
    ("DELETE", "/admin/api/knowledge/nope", None, 404),
    (
        "PUT",
        "/admin/api/knowledge.json",
        b'{"documents": [{"id": "a", "content": "x"}, {"id": "a", "content": "y"}]}',
        400,
    ),
    ("PUT", "/admin/api/knowledge.json", b'{"documents": "none"}', 400),
    ("POST", "/admin/api/retrieval", b'{"messages": []}', 400),
    ("POST", "/admin/api/retrieval", b'{"messages": "hi"}', 400),
]


@pytest.mark.settings(max_document_chars=200_000)
@pytest.mark.parametrize("method,path,raw,status", BAD_KNOWLEDGE)
@pytest.mark.gen_test
async def test_bad_knowledge_input_is_refused_and_changes_nothing(
    http_server, base_url, services, settings, method, path, raw, status
):
    before = stored(settings)
    response = await bearer(base_url, services.admin_token).fetch(method, path, raw=raw)
    assert response.code == status
    error = json.loads(response.body)["error"]
    assert error["message"] and set(error) == {"message", "type", "param", "code"}
    assert stored(settings) == before


@pytest.mark.gen_test
async def test_audio_upload_activate_preview_delete(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    body, content_type = multipart(
        {"transcript": "A new reply.", "name": "greeting", "activate": "true"},
        "greeting.wav",
        encode(tone(1.5, 44100, channels=2), 44100),
    )
    created = await admin.fetch("POST", "/admin/api/audio", raw=body, headers={"Content-Type": content_type})
    assert created.code == 201
    clip = json.loads(created.body)
    assert clip == {"name": "greeting", "duration": 1.5, "size": 48000, "transcript": "A new reply.", "active": True}
    listed = json.loads((await admin.fetch("GET", "/admin/api/audio")).body)["clips"]
    assert {c["name"]: c["active"] for c in listed} == {"file": False, "greeting": True}
    wav = await admin.fetch("GET", "/admin/api/audio/greeting.wav")
    assert wav.code == 200 and wav.headers["Content-Type"] == "audio/wav" and wav.body[:4] == b"RIFF"
    activated = await admin.fetch("POST", "/admin/api/audio/file/activate")
    assert activated.code == 200 and json.loads(activated.body)["active"] == "file"
    assert (await admin.fetch("DELETE", "/admin/api/audio/greeting")).code == 204
    assert [c["name"] for c in services.audio_library.list()] == ["file"]


@pytest.mark.gen_test
async def test_a_malformed_multipart_body_is_a_400(http_server, base_url, services, settings):
    before = stored(settings)
    response = await bearer(base_url, services.admin_token).fetch(
        "POST", "/admin/api/audio", raw=b"--x\r\nnot a form", headers={"Content-Type": "multipart/form-data"}
    )
    assert response.code == 400 and json.loads(response.body)["error"]["param"] == "file"
    assert stored(settings) == before


@pytest.mark.gen_test
async def test_a_long_file_name_becomes_a_valid_clip_name(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    body, content_type = multipart({"transcript": "Long."}, "My clip " + "x" * 100 + ".pcm", b"\x01\x00" * 1600)
    created = await admin.fetch("POST", "/admin/api/audio", raw=body, headers={"Content-Type": content_type})
    assert created.code == 201
    name = json.loads(created.body)["name"]
    assert name.startswith("My-clip-x") and len(name) == 64


@pytest.mark.gen_test
async def test_a_pcm_upload_named_by_its_file(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    body, content_type = multipart({"transcript": "Raw."}, "raw-clip.pcm", b"\x01\x00" * 16000)
    created = await admin.fetch("POST", "/admin/api/audio", raw=body, headers={"Content-Type": content_type})
    assert created.code == 201 and json.loads(created.body)["name"] == "raw-clip"


BAD_UPLOADS = [
    ({"transcript": "t", "name": "x"}, None, b"", 400, "multipart field named 'file'"),
    ({"transcript": "t", "name": "x"}, "x.wav", b"not audio", 400, "could not be decoded"),
    ({"transcript": "", "name": "x"}, "x.wav", encode(tone(1, 16000), 16000), 400, "needs a transcript"),
    ({"transcript": "t", "name": "../x"}, "x.wav", encode(tone(1, 16000), 16000), 400, "clip name"),
    ({"transcript": "t", "name": ".hidden"}, "x.wav", encode(tone(1, 16000), 16000), 400, "clip name"),
    ({"transcript": "t", "name": "x"}, "x.wav", b"", 400, "empty"),
    ({"transcript": "t", "name": "long"}, "x.wav", encode(tone(3, 16000), 16000), 400, "limit of 2 s"),
    ({"transcript": "t", "name": "big"}, "x.pcm", b"\x00" * 200_002, 413, "larger than"),
]


@pytest.mark.settings(audio_max_seconds=2, audio_max_bytes=200_000)
@pytest.mark.parametrize("fields,file_name,data,status,message", BAD_UPLOADS)
@pytest.mark.gen_test
async def test_bad_uploads_are_refused_and_change_nothing(
    http_server, base_url, services, settings, fields, file_name, data, status, message
):
    before = stored(settings)
    body, content_type = multipart(fields, file_name, data)
    response = await bearer(base_url, services.admin_token).fetch(
        "POST", "/admin/api/audio", raw=body, headers={"Content-Type": content_type}
    )
    assert response.code == status
    assert message in json.loads(response.body)["error"]["message"]
    assert stored(settings) == before


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("DELETE", "/admin/api/audio/nope", 404),
        ("POST", "/admin/api/audio/nope/activate", 404),
        ("GET", "/admin/api/audio/nope.wav", 404),
        ("DELETE", "/admin/api/audio/..", 400),
        ("GET", "/admin/api/audio/.hidden.wav", 400),
        ("DELETE", "/admin/api/audio/%2e%2e%2fescape", 400),
    ],
)
@pytest.mark.gen_test
async def test_unknown_or_unsafe_clip_names(http_server, base_url, services, settings, method, path, status):
    before = stored(settings)
    response = await bearer(base_url, services.admin_token).fetch(method, path)
    assert response.code == status and "error" in json.loads(response.body)
    assert stored(settings) == before


@pytest.mark.gen_test
async def test_status_shows_the_upstream_but_never_its_key(http_server, base_url, services, settings):
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    response = await bearer(base_url, services.admin_token).fetch("GET", "/admin/api/status")
    status = json.loads(response.body)
    upstream = status["upstream"]
    assert upstream["mode"] == "openai" and upstream["base_url"] == settings.base_url
    assert upstream["hedging"] == "off" and [u["name"] for u in upstream["upstreams"]] == ["default"]
    assert upstream["upstreams"][0]["state"] == "healthy" and upstream["upstreams"][0]["first_chunk_p50_ms"] is None
    assert status["totals"]["ok"] == 1 and status["in_flight"] == 0 and status["uptime_seconds"] >= 0
    assert settings.api_key not in response.body.decode()
