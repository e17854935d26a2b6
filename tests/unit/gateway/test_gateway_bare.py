"""A /v3 route declared bare answers its model as the whole body (ClickSend's newer resources, e.g. alpha tags, whose
SDK models validate the body itself); every other /v3 route keeps the envelope."""

from __future__ import annotations

from gateway.compat_clicksend import success_envelope
from gateway.routes import discover_routes
from sendsafe.messaging.v1 import alpha_tag_service_pb2 as pb


def test_alpha_tag_routes_are_bare_and_name_their_model_field() -> None:
    table = {r.key: r for r in discover_routes()}
    for key in ("POST /v3/alpha-tags", "GET /v3/alpha-tags/{alpha_tag_id}"):
        assert table[key].bare and table[key].data_field == "alpha_tag", key
    assert table["GET /v3/alpha-tags"].bare and table["GET /v3/alpha-tags"].data_field == ""
    assert not table["POST /v3/sms/send"].bare


def test_a_bare_answer_is_the_model_and_an_enveloped_one_wraps_it() -> None:
    table = {r.key: r for r in discover_routes()}
    tag = pb.AlphaTag(id="t1", alpha_tag="Cafe Roma", status="PENDING", countries=["AU"])
    body = success_envelope(table["GET /v3/alpha-tags/{alpha_tag_id}"], pb.GetAlphaTagResponse(alpha_tag=tag))
    assert body["id"] == "t1" and body["alpha_tag"] == "Cafe Roma" and body["countries"] == ["AU"]
    assert "http_code" not in body and "data" not in body
    listed = success_envelope(table["GET /v3/alpha-tags"], pb.ListAlphaTagsResponse(
        alpha_tags=[tag], metadata=pb.AlphaTagListMetadata(pagination=pb.AlphaTagPagination(self_url="/x"))))
    assert listed["alpha_tags"][0]["id"] == "t1" and listed["_metadata"]["pagination"]["self"] == "/x"
