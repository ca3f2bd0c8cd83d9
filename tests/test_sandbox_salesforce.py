"""The Salesforce sandbox, driven over loopback HTTP with plain httpx as a client would."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tidegate.sandbox.salesforce import API_VERSION, SalesforceSandbox, salesforce_id

V = f"/services/data/v{API_VERSION}"
ACCOUNT = {"type": "Account"}


@pytest.fixture(scope="module")
def keypair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.fixture
def org(keypair: tuple[bytes, bytes]) -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(client_id="cid", client_secret="csecret", consumer_key="ckey",
                           public_key=keypair[1], polls_to_complete=3) as server:
        yield server


def login(org: SalesforceSandbox) -> httpx.Client:
    answer = httpx.post(org.token_url, data={"grant_type": "client_credentials",
                                             "client_id": "cid", "client_secret": "csecret"})
    assert answer.status_code == 200, answer.text
    token = answer.json()
    return httpx.Client(base_url=token["instance_url"],
                        headers={"Authorization": f"Bearer {token['access_token']}"})


@pytest.fixture
def sf(org: SalesforceSandbox) -> Iterator[httpx.Client]:
    with login(org) as client:
        yield client


def account(name: str, **fields: Any) -> dict[str, Any]:
    return {"attributes": ACCOUNT, "Name": name, **fields}


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# OAuth ----------------------------------------------------------------------------


def test_client_credentials_flow(org: SalesforceSandbox) -> None:
    answer = httpx.post(org.token_url, data={"grant_type": "client_credentials",
                                             "client_id": "cid", "client_secret": "csecret"})
    token = answer.json()
    assert token["instance_url"] == org.url
    assert token["token_type"] == "Bearer"
    assert {"access_token", "id", "issued_at", "signature"} <= token.keys()
    wrong = httpx.post(org.token_url, data={"grant_type": "client_credentials",
                                            "client_id": "cid", "client_secret": "nope"})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_client"
    odd = httpx.post(org.token_url, data={"grant_type": "password"})
    assert odd.json()["error"] == "unsupported_grant_type"


def test_jwt_bearer_flow(org: SalesforceSandbox, keypair: tuple[bytes, bytes]) -> None:
    private = keypair[0]

    def assertion(**claims: Any) -> str:
        body = {"iss": "ckey", "sub": "user@example.com", "aud": "https://login.salesforce.com",
                "exp": int(time.time()) + 180, **claims}
        return str(jwt.encode(body, private, algorithm="RS256"))

    def grant(token: str) -> httpx.Response:
        return httpx.post(org.token_url, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": token})

    good = grant(assertion())
    assert good.status_code == 200, good.text
    assert good.json()["instance_url"] == org.url
    with httpx.Client(base_url=org.url, headers={
            "Authorization": f"Bearer {good.json()['access_token']}"}) as client:
        assert client.get(f"{V}/sobjects/Account/describe").status_code == 200
    assert grant(assertion(iss="other")).json()["error"] == "invalid_client_id"
    assert grant(assertion(aud="https://example.com")).json()["error"] == "invalid_grant"
    expired = grant(assertion(exp=int(time.time()) - 600))
    assert (expired.status_code, expired.json()["error"]) == (400, "invalid_grant")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"iss": "ckey", "aud": "https://login.salesforce.com",
                         "exp": int(time.time()) + 60}, stranger, algorithm="RS256")
    assert grant(forged).json()["error"] == "invalid_grant"


def test_expired_tokens_answer_401(org: SalesforceSandbox, sf: httpx.Client) -> None:
    assert sf.get(f"{V}/sobjects/Account/describe").status_code == 200
    org.expire_tokens()
    answer = sf.get(f"{V}/sobjects/Account/describe")
    assert answer.status_code == 401
    assert answer.json() == [{"message": "Session expired or invalid",
                              "errorCode": "INVALID_SESSION_ID"}]
    with login(org) as fresh:
        assert fresh.get(f"{V}/sobjects/Account/describe").status_code == 200


# Describe -------------------------------------------------------------------------


def test_describe(sf: httpx.Client) -> None:
    doc = sf.get(f"{V}/sobjects/Account/describe").json()
    fields = {f["name"]: f for f in doc["fields"]}
    assert fields["APS__c"]["precision"] == 5 and fields["APS__c"]["scale"] == 2
    assert fields["External_Id__c"]["externalId"] is True
    assert fields["LastModifiedDate"]["createable"] is False
    assert fields["Name"]["nillable"] is False
    assert "Banking" in [v["value"] for v in fields["Industry"]["picklistValues"]]
    assert sf.get(f"{V}/sobjects/Contact/describe").json()["keyPrefix"] == "003"
    missing = sf.get(f"{V}/sobjects/Nope/describe")
    assert missing.status_code == 404 and missing.json()[0]["errorCode"] == "NOT_FOUND"


# sObject Collections ----------------------------------------------------------------


def test_create_in_request_order_with_per_record_errors(
    org: SalesforceSandbox, sf: httpx.Client
) -> None:
    records = [
        account("Acme", Industry="Banking", APS__c=123.456, External_Id__c="a-1"),
        {"attributes": ACCOUNT, "Industry": "Banking"},
        account("Too big", APS__c=1234.5),
        account("Bad pick", Industry="Space"),
        account("Read only", LastModifiedDate="2024-01-01T00:00:00Z"),
        {"attributes": {"type": "Contact"}, "LastName": "Lee", "Email": "lee@example.com"},
    ]
    answer = sf.post(f"{V}/composite/sobjects", json={"allOrNone": False, "records": records})
    assert answer.status_code == 200
    results = answer.json()
    assert [r["success"] for r in results] == [True, False, False, False, False, True]
    codes = [r["errors"][0]["statusCode"] if r["errors"] else None for r in results]
    assert codes == [None, "REQUIRED_FIELD_MISSING", "NUMBER_OUTSIDE_VALID_RANGE",
                     "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                     "INVALID_FIELD_FOR_INSERT_UPDATE", None]
    assert results[1]["errors"][0]["fields"] == ["Name"]
    stored = org.records("Account")[results[0]["id"]]
    assert stored["APS__c"] == 123.46 and stored["External_Id__c"] == "a-1"
    assert results[5]["id"].startswith("003")
    assert len(org.records("Account")) == 1


def test_unknown_field_and_bad_json_type_refuse_the_request(sf: httpx.Client) -> None:
    unknown = sf.post(f"{V}/composite/sobjects",
                      json={"records": [account("A", Nope__c=1)]})
    assert unknown.status_code == 400 and unknown.json()[0]["errorCode"] == "INVALID_FIELD"
    typed = sf.post(f"{V}/composite/sobjects",
                    json={"records": [account("A", AnnualRevenue="lots")]})
    assert typed.status_code == 400 and typed.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    untyped = sf.post(f"{V}/composite/sobjects", json={"records": [{"Name": "A"}]})
    assert untyped.status_code == 400 and untyped.json()[0]["errorCode"] == "INVALID_TYPE"


def test_all_or_none_rolls_back(org: SalesforceSandbox, sf: httpx.Client) -> None:
    results = sf.post(f"{V}/composite/sobjects", json={
        "allOrNone": True, "records": [account("Good"), {"attributes": ACCOUNT}]}).json()
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert org.records("Account") == {}


def test_collection_limit_is_200(sf: httpx.Client) -> None:
    ok = sf.post(f"{V}/composite/sobjects",
                 json={"records": [account(f"A{i}") for i in range(200)]})
    assert ok.status_code == 200 and all(r["success"] for r in ok.json())
    over = sf.post(f"{V}/composite/sobjects",
                   json={"records": [account(f"B{i}") for i in range(201)]})
    assert over.status_code == 400 and over.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    ids = ",".join(r["id"] for r in ok.json()) + "," + ok.json()[0]["id"]
    too_many = sf.delete(f"{V}/composite/sobjects", params={"ids": ids})
    assert too_many.status_code == 400


def test_update_upsert_and_delete(org: SalesforceSandbox, sf: httpx.Client) -> None:
    first = org.put("Account", {"Name": "Old", "External_Id__c": "x-1"})
    gone = org.put("Account", {"Name": "Gone"})
    assert sf.delete(f"{V}/composite/sobjects", params={"ids": gone}).json()[0]["success"]
    never = salesforce_id("001TG9999999999")
    updated = sf.patch(f"{V}/composite/sobjects", json={"records": [
        {"attributes": ACCOUNT, "id": first, "Name": "New"},
        {"attributes": ACCOUNT, "id": gone, "Name": "Back"},
        {"attributes": ACCOUNT, "id": never, "Name": "Who"},
        {"attributes": ACCOUNT, "Name": "No id"},
        {"attributes": ACCOUNT, "id": first, "Name": None},
    ]}).json()
    assert [r["errors"][0]["statusCode"] if r["errors"] else "ok" for r in updated] == [
        "ok", "ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "MISSING_ARGUMENT",
        "REQUIRED_FIELD_MISSING"]
    assert org.records("Account")[first]["Name"] == "New"

    upserted = sf.patch(f"{V}/composite/sobjects/Account/External_Id__c", json={
        "allOrNone": False, "records": [
            account("Renamed", External_Id__c="x-1"),
            account("Fresh", External_Id__c="x-2"),
            account("Twin", External_Id__c="x-3"),
            account("Twin", External_Id__c="x-3"),
        ]}).json()
    assert [(r["success"], r.get("created")) for r in upserted] == [
        (True, False), (True, True), (False, False), (False, False)]
    assert upserted[0]["id"] == first
    assert upserted[2]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"
    assert org.find("Account", "External_Id__c", "x-2")[0]["Name"] == "Fresh"
    not_external = sf.patch(f"{V}/composite/sobjects/Account/Name",
                            json={"records": [account("A")]})
    assert not_external.status_code == 400

    deleted = sf.delete(f"{V}/composite/sobjects",
                        params={"ids": f"{first},{gone},bogus", "allOrNone": "false"}).json()
    assert [r["success"] for r in deleted] == [True, False, False]
    assert deleted[1]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert deleted[2]["errors"][0]["statusCode"] == "MALFORMED_ID"
    assert first in org.deleted("Account") and first not in org.records("Account")


def test_locked_rows_fail_then_succeed(org: SalesforceSandbox, sf: httpx.Client) -> None:
    record_id = org.put("Account", {"Name": "Busy", "External_Id__c": "lock-1"})
    org.lock_rows(["lock-1"], times=2)
    body = {"records": [account("Busy 2", External_Id__c="lock-1"),
                        account("Free", External_Id__c="free-1")]}
    url = f"{V}/composite/sobjects/Account/External_Id__c"
    for _ in range(2):
        results = sf.patch(url, json=body).json()
        assert results[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
        assert results[1]["success"]
    assert sf.patch(url, json=body).json()[0]["success"]
    assert org.records("Account")[record_id]["Name"] == "Busy 2"


# Bulk API 2.0 -----------------------------------------------------------------------


def bulk_job(sf: httpx.Client, operation: str, csv_text: str, *, obj: str = "Account",
             external_id: str | None = None, polls: int = 20) -> dict[str, Any]:
    spec: dict[str, Any] = {"object": obj, "operation": operation, "lineEnding": "LF"}
    if external_id:
        spec["externalIdFieldName"] = external_id
    job = sf.post(f"{V}/jobs/ingest", json=spec)
    assert job.status_code == 200, job.text
    info = job.json()
    assert info["state"] == "Open"
    upload = sf.put(f"/{info['contentUrl'].lstrip('/')}", content=csv_text.encode(),
                    headers={"Content-Type": "text/csv"})
    assert upload.status_code == 201, upload.text
    closed = sf.patch(f"{V}/jobs/ingest/{info['id']}", json={"state": "UploadComplete"})
    assert closed.json()["state"] == "UploadComplete"
    seen = []
    for _ in range(polls):
        info = sf.get(f"{V}/jobs/ingest/{info['id']}").json()
        seen.append(info["state"])
        if info["state"] in ("JobComplete", "Failed", "Aborted"):
            break
    assert "InProgress" in seen or info["state"] == "Failed"
    return dict(info)


def results(sf: httpx.Client, job_id: str, kind: str) -> list[dict[str, str]]:
    answer = sf.get(f"{V}/jobs/ingest/{job_id}/{kind}/")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    return rows(answer.text)


def test_bulk_insert_shuffles_results(org: SalesforceSandbox, sf: httpx.Client) -> None:
    lines = ["Name,External_Id__c,APS__c"] + [f"Acct {i},e-{i},{i}.5" for i in range(30)]
    lines += [",e-bad,", "Bad number,e-num,abc"]
    info = bulk_job(sf, "insert", "\n".join(lines) + "\n")
    assert info["state"] == "JobComplete"
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (32, 2)
    ok = results(sf, info["id"], "successfulResults")
    assert [r["External_Id__c"] for r in ok] != [f"e-{i}" for i in range(30)]
    stored = org.records("Account")
    for row in ok:
        assert row["sf__Created"] == "true"
        assert stored[row["sf__Id"]]["External_Id__c"] == row["External_Id__c"]
    failed = {r["External_Id__c"]: r for r in results(sf, info["id"], "failedResults")}
    assert failed["e-bad"]["sf__Error"] == (
        "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --")
    assert failed["e-num"]["sf__Error"].startswith("INVALID_TYPE_ON_FIELD_IN_RECORD:")
    assert failed["e-bad"]["sf__Id"] == ""
    assert list(failed["e-bad"])[:2] == ["sf__Id", "sf__Error"]


def test_bulk_update_upsert_delete_hard_delete() -> None:
    org = SalesforceSandbox(client_id="cid", client_secret="csecret",
                            hard_delete_allowed=True, polls_to_complete=2)
    with org, login(org) as client:
        ids = [org.put("Account", {"Name": f"A{i}", "External_Id__c": f"k{i}"})
               for i in range(4)]
        never = salesforce_id("001TG9999999999")
        info = bulk_job(client, "update", f"Id,Name\n{ids[0]},Renamed\n{never},Ghost\n")
        assert org.records("Account")[ids[0]]["Name"] == "Renamed"
        failed = results(client, info["id"], "failedResults")
        assert failed[0]["sf__Id"] == never
        assert failed[0]["sf__Error"] == (
            "INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:--")

        info = bulk_job(client, "upsert", "External_Id__c,Name,Industry\nk1,One,Banking\n"
                        "k9,Nine,\nk8,Eight,Space\n", external_id="External_Id__c")
        ok = {r["External_Id__c"]: r for r in results(client, info["id"], "successfulResults")}
        assert ok["k1"]["sf__Created"] == "false" and ok["k1"]["sf__Id"] == ids[1]
        assert ok["k9"]["sf__Created"] == "true"
        assert org.find("Account", "External_Id__c", "k9")[0]["Id"] == ok["k9"]["sf__Id"]
        bad = results(client, info["id"], "failedResults")
        assert bad[0]["sf__Error"].startswith("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:")

        bulk_job(client, "delete", f"Id\n{ids[2]}\n")
        assert ids[2] not in org.records("Account") and ids[2] in org.deleted("Account")
        info = bulk_job(client, "hardDelete", f"Id\n{ids[3]}\n{ids[2]}\n")
        assert info["numberRecordsFailed"] == 1
        assert ids[3] not in org.records("Account")


def test_hard_delete_needs_permission(sf: httpx.Client) -> None:
    answer = sf.post(f"{V}/jobs/ingest", json={"object": "Account", "operation": "hardDelete"})
    assert answer.status_code == 400


def test_bulk_job_rules(org: SalesforceSandbox, sf: httpx.Client) -> None:
    job = sf.post(f"{V}/jobs/ingest", json={"object": "Account", "operation": "insert"}).json()
    url = f"{V}/jobs/ingest/{job['id']}"
    assert sf.put(f"{url}/batches", content=b"Name\nA\n",
                  headers={"Content-Type": "text/csv"}).status_code == 201
    again = sf.put(f"{url}/batches", content=b"Name\nB\n", headers={"Content-Type": "text/csv"})
    assert again.status_code == 400 and again.json()[0]["errorCode"] == "BULK_API_ERROR"
    assert sf.get(f"{url}/successfulResults/").status_code == 409
    assert sf.get(f"{V}/jobs/ingest/750TG0000000999AAA").status_code == 404
    upsert = sf.post(f"{V}/jobs/ingest", json={"object": "Account", "operation": "upsert"})
    assert upsert.status_code == 400
    assert (org.upload_count, org.upload_bytes, org.job_count) == (1, 7, 1)

    org.max_upload_bytes = 100
    big = sf.post(f"{V}/jobs/ingest", json={"object": "Account", "operation": "insert"}).json()
    too_big = sf.put(f"{V}/jobs/ingest/{big['id']}/batches", content=b"Name\n" + b"x\n" * 60,
                     headers={"Content-Type": "text/csv"})
    assert too_big.status_code == 413


def test_abort_leaves_unprocessed_records(org: SalesforceSandbox, sf: httpx.Client) -> None:
    job = sf.post(f"{V}/jobs/ingest", json={"object": "Account", "operation": "insert"}).json()
    url = f"{V}/jobs/ingest/{job['id']}"
    sf.put(f"{url}/batches", content=b"Name,External_Id__c\nA,1\nB,2\n",
           headers={"Content-Type": "text/csv"})
    sf.patch(url, json={"state": "UploadComplete"})
    assert sf.get(url).json()["state"] == "InProgress"
    assert sf.patch(url, json={"state": "Aborted"}).json()["state"] == "Aborted"
    assert sf.get(url).json()["state"] == "Aborted"
    left = results(sf, job["id"], "unprocessedrecords")
    assert sorted(r["External_Id__c"] for r in left) == ["1", "2"]
    assert results(sf, job["id"], "successfulResults") == []
    assert org.records("Account") == {}


def test_failed_job_and_crlf(sf: httpx.Client) -> None:
    info = bulk_job(sf, "insert", "Name,Nope__c\nA,1\n")
    assert info["state"] == "Failed" and "Nope__c" in info["errorMessage"]
    assert len(results(sf, info["id"], "unprocessedrecords")) == 1
    info = bulk_job(sf, "insert", "Name\r\nA\r\n")
    assert info["state"] == "Failed" and "LineEnding" in info["errorMessage"]


def test_jobs_can_be_listed(sf: httpx.Client) -> None:
    made = {sf.post(f"{V}/jobs/ingest", json={"object": o, "operation": "insert"}).json()["id"]
            for o in ("Account", "Contact")}
    listing = sf.get(f"{V}/jobs/ingest").json()
    assert listing["done"] is True
    assert {j["id"] for j in listing["records"]} == made
    assert all(j["jobType"] == "V2Ingest" for j in listing["records"])


def test_locked_rows_in_bulk(org: SalesforceSandbox, sf: httpx.Client) -> None:
    record_id = org.put("Account", {"Name": "Busy", "External_Id__c": "b-1"})
    org.lock_rows([record_id], times=1)
    info = bulk_job(sf, "update", f"Id,Name\n{record_id},Later\n")
    failed = results(sf, info["id"], "failedResults")
    assert failed[0]["sf__Error"].startswith("UNABLE_TO_LOCK_ROW:")
    bulk_job(sf, "update", f"Id,Name\n{record_id},Later\n")
    assert org.records("Account")[record_id]["Name"] == "Later"


# Query ------------------------------------------------------------------------------


def test_soql_in_lookups(org: SalesforceSandbox, sf: httpx.Client) -> None:
    ids = {f"q{i}": org.put("Account", {"Name": f"Q{i}", "External_Id__c": f"q{i}"})
           for i in range(5)}
    soql = "SELECT Id, External_Id__c FROM Account WHERE External_Id__c IN ('q1','q3','zz')"
    doc = sf.get(f"{V}/query", params={"q": soql}).json()
    assert doc["done"] is True and doc["totalSize"] == 2
    assert {r["External_Id__c"]: r["Id"] for r in doc["records"]} == {
        "q1": ids["q1"], "q3": ids["q3"]}
    assert doc["records"][0]["attributes"]["type"] == "Account"
    one = sf.get(f"{V}/query", params={"q": "SELECT Name FROM Account WHERE Id = "
                                            f"'{ids['q2'][:15]}' LIMIT 1"}).json()
    assert one["records"][0]["Name"] == "Q2"
    assert sf.get(f"{V}/query", params={"q": "SELECT Id FROM Account LIMIT 2"}).json()[
        "totalSize"] == 2
    bad = sf.get(f"{V}/query", params={"q": "SELECT FROM WHERE"})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "MALFORMED_QUERY"
    column = sf.get(f"{V}/query", params={"q": "SELECT Nope FROM Account"})
    assert column.json()[0]["errorCode"] == "INVALID_FIELD"


def test_query_pages(org: SalesforceSandbox, sf: httpx.Client) -> None:
    org.page_size = 3
    for i in range(7):
        org.put("Account", {"Name": f"P{i}"})
    doc = sf.get(f"{V}/query", params={"q": "SELECT Id FROM Account"}).json()
    seen = list(doc["records"])
    while not doc["done"]:
        doc = sf.get(doc["nextRecordsUrl"]).json()
        seen += doc["records"]
    assert len({r["Id"] for r in seen}) == 7


# Limits and faults -------------------------------------------------------------------


def test_limit_info_counts_every_call(org: SalesforceSandbox, sf: httpx.Client) -> None:
    first = sf.get(f"{V}/sobjects/Account/describe").headers["sforce-limit-info"]
    second = sf.get(f"{V}/sobjects/Account/describe").headers["sforce-limit-info"]
    assert first == f"api-usage=1/{org.daily_limit}"
    assert second == f"api-usage=2/{org.daily_limit}"


def test_throttle_next_answers_403(org: SalesforceSandbox, sf: httpx.Client) -> None:
    org.throttle_next(2)
    for _ in range(2):
        answer = sf.get(f"{V}/sobjects/Account/describe")
        assert answer.status_code == 403
        assert answer.json() == [{"message": "TotalRequests Limit exceeded.",
                                  "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert sf.get(f"{V}/sobjects/Account/describe").status_code == 200


def test_daily_limit(org: SalesforceSandbox, sf: httpx.Client) -> None:
    org.daily_limit = 5
    org.use_api(4)
    last = sf.get(f"{V}/sobjects/Account/describe")
    assert last.status_code == 200 and last.headers["sforce-limit-info"] == "api-usage=5/5"
    spent = sf.post(f"{V}/composite/sobjects", json={"records": [account("A")]})
    assert spent.status_code == 403
    assert spent.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert org.records("Account") == {}


def test_fail_next_answers_5xx(org: SalesforceSandbox, sf: httpx.Client) -> None:
    org.fail_next(1, status=502)
    assert sf.get(f"{V}/sobjects/Account/describe").status_code == 502
    assert sf.get(f"{V}/sobjects/Account/describe").status_code == 200
    assert org.request_count >= 3
