"""Read the scores back from the org and compare them with the model; exit 1 if they differ.

    python check.py DIR      # reads SF_LOGIN_URL, SF_CLIENT_ID, SF_CLIENT_SECRET like the sync
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb

from tidegate.destinations.salesforce.api import AuthConfig, SalesforceApi


def org_scores() -> dict[str, float | None]:
    api = SalesforceApi(
        os.environ.get("SF_LOGIN_URL", "http://127.0.0.1:8791"),
        AuthConfig(client_id=os.environ.get("SF_CLIENT_ID", "tidegate-sandbox-client"),
                   client_secret=os.environ.get("SF_CLIENT_SECRET", "tidegate-sandbox-secret")),
        "62.0", root=Path("."), verify=False)
    out: dict[str, float | None] = {}
    try:
        page = api.request("GET", "query",
                           params={"q": "SELECT External_Id__c, APS__c FROM Account"}).json()
        while True:
            out.update({r["External_Id__c"]: r["APS__c"] for r in page["records"]})
            if page.get("done", True):
                break
            page = api.request("GET", page["nextRecordsUrl"]).json()
    finally:
        api.close()
    return out


def main() -> None:
    root = Path(sys.argv[1])
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        model = dict(con.execute("select account_id, aps from analytics.account_scores"
                                 ).fetchall())
    held = org_scores()
    wrong = sorted(k for k, aps in model.items() if held.get(k) != aps)
    sample = sorted(model)[:3]
    print("in the org: " + ", ".join(f"{k} APS__c={held.get(k)}" for k in sample) + ", …")
    if wrong:
        print(f"{len(wrong):,} of {len(model):,} accounts differ from the model, e.g. "
              f"{wrong[:3]}")
        raise SystemExit(1)
    print(f"all {len(model):,} accounts in the org hold the model's score")


if __name__ == "__main__":
    main()
