#!/usr/bin/env bash
# The hourly account-scoring sync, two hours of it, against a local Salesforce org.
#
#   examples/account_scoring/run.sh
#
# Builds the project's .venv on first use, starts `tidegate sandbox salesforce` on a
# free port, builds the warehouse, seeds the org with the accounts, and runs the
# score sync for hour 1 (every account: Bulk API 2.0) and hour 2 (the few whose
# score moved: sObject Collections). Work files go to examples/account_scoring/.run/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
make -s -C "$root" .venv/.installed-examples
py="$root/.venv/bin/python"
tidegate="$root/.venv/bin/tidegate"

work="$here/.run"
rm -rf "$work"
mkdir -p "$work"
cp "$here/tidegate.yml" "$work/"

port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$tidegate" sandbox salesforce --port "$port" >"$work/sandbox.log" 2>&1 &
sandbox=$!
trap 'kill "$sandbox" 2>/dev/null || true' EXIT
export SF_LOGIN_URL="http://127.0.0.1:$port"
"$py" - <<PY
import time, httpx
for _ in range(300):
    try:
        httpx.get("$SF_LOGIN_URL/services/data", timeout=1); break
    except httpx.HTTPError:
        time.sleep(0.05)
else:
    raise SystemExit("the sandbox org did not start; see $work/sandbox.log")
PY
echo "sandbox org on $SF_LOGIN_URL"

step() { echo; echo "== $*"; }

step "hour 1: the warehouse, and the accounts a real org would already hold"
"$py" "$here/warehouse.py" "$work" --hour 1
"$tidegate" run seed_accounts --project "$work"

step "hour 1: every account's score (over bulk_threshold: Bulk API 2.0)"
"$tidegate" run account_scores --project "$work"
"$tidegate" show 2 --project "$work" | grep -E "^destination:"   # run 2: a fresh .run/

step "hour 2: new product usage; only the scores that moved are sent (Collections)"
"$py" "$here/warehouse.py" "$work" --hour 2
"$tidegate" run account_scores --project "$work"
"$tidegate" show 3 --project "$work" | grep -E "^destination:"

step "the org, read back"
"$py" "$here/check.py" "$work"
"$tidegate" runs --project "$work"
