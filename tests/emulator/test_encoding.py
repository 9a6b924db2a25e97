"""Responses are compact UTF-8 JSON, as kube-apiserver writes them (encoding/json: no \\u escapes
for non-ASCII text), for plain answers and watch events alike."""

from __future__ import annotations

from kube_emulator.http_api import dumpb

from .conftest import Http

CMS = "/api/v1/namespaces/default/configmaps"


async def raw(http: Http, path: str) -> bytes:
    headers = {"Authorization": f"Bearer {http.token}"} if http.token else {}
    async with http.session.get(http.url + path, ssl=http.ssl, headers=headers) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_non_ascii_text_is_sent_as_utf8_and_reads_back_unchanged(http: Http) -> None:
    body = {"metadata": {"name": "utf8", "annotations": {"note": "café ☕"}}, "data": {"k": "ü"}}
    status, created, _ = await http.post(CMS, body)
    assert status == 201 and created["metadata"]["annotations"]["note"] == "café ☕"
    data = await raw(http, f"{CMS}/utf8")
    assert "café ☕".encode() in data and b"\\u" not in data
    assert b": " not in data and b", " not in data  # compact
    rv = created["metadata"]["resourceVersion"]
    events = await raw(http, f"{CMS}?watch=1&resourceVersion={int(rv) - 1}&timeoutSeconds=1")
    assert "ü".encode() in events.splitlines()[0]


def test_numbers_beyond_64_bits_still_encode() -> None:
    assert dumpb({"n": 2**70, "f": 1.5}) == b'{"n":1180591620717411303424,"f":1.5}'
