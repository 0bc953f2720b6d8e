#!/usr/bin/env bash
# Checks the Confluent-compatible behaviour the imgstream client relies on, against a running
# registry (scripts/stack/registry.sh start). Re-runnable: uses a fresh subject each run unless
# one is given.   stack/registry/smoke.sh [subject]
set -euo pipefail
B="${REGISTRY_URL:-http://127.0.0.1:8081/apis/ccompat/v7}"
S="${1:-smoke-$(date +%s)-$$-value}"
CT='Content-Type: application/vnd.schemaregistry.v1+json'
fail=0

# call METHOD PATH [BODY]: sets CODE and BODY
call() {
  local out
  out="$(curl -sS -X "$1" -H "$CT" -w '\n%{http_code}' "$B$2" ${3:+-d "$3"})"
  CODE="${out##*$'\n'}"
  BODY="${out%$'\n'*}"
}
# expect DESCRIPTION CODE [BODY-REGEX]
expect() {
  if [[ "$CODE" == "$2" && ( -z "${3:-}" || "$BODY" =~ $3 ) ]]; then
    printf 'ok    %-52s %s %s\n' "$1" "$CODE" "$BODY"
  else
    printf 'FAIL  %-52s %s %s (wanted %s %s)\n' "$1" "$CODE" "$BODY" "$2" "${3:-}"
    fail=1
  fi
}
avro() { # avro FIELDS-JSON -> request body
  local schema="{\"type\":\"record\",\"name\":\"T\",\"namespace\":\"imgstream.smoke\",\"fields\":[$1]}"
  printf '{"schema":%s}' "$(printf '%s' "$schema" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')"
}
V1="$(avro '{"name":"a","type":"string"}')"
BAD="$(avro '{"name":"a","type":"string"},{"name":"b","type":"int"}')"
V2="$(avro '{"name":"a","type":"string"},{"name":"c","type":["null","string"],"default":null}')"

echo "subject $S at $B"
call POST "/subjects/$S/versions" "$V1"; expect "register v1" 200 '^\{"id":[0-9]+\}$'
id1="${BODY//[^0-9]/}"
call POST "/subjects/$S/versions" "$V1"; expect "re-register v1 -> same id" 200 "^\\{\"id\":$id1\\}$"
call GET "/schemas/ids/$id1"; expect "GET /schemas/ids/$id1" 200 '"schema":'
call GET "/schemas/ids/2147483000"; expect "GET unknown id" 404 '"error_code":40403'
call PUT "/config/$S" '{"compatibility":"BACKWARD"}'; expect "PUT config BACKWARD" 200 '"compatibility":"BACKWARD"'
call GET "/config/$S"; expect "GET config" 200 '"compatibilityLevel":"BACKWARD"'
call POST "/compatibility/subjects/$S/versions/latest" "$BAD"; expect "compat check: new required field" 200 '"is_compatible":false'
call POST "/subjects/$S/versions" "$BAD"; expect "register incompatible -> refused" 409 '"error_code":409'
call POST "/compatibility/subjects/$S/versions/latest" "$V2"; expect "compat check: new optional field" 200 '"is_compatible":true'
call POST "/subjects/$S/versions" "$V2"; expect "register v2" 200 '^\{"id":[0-9]+\}$'
id2="${BODY//[^0-9]/}"
call GET "/subjects/$S/versions/latest"; expect "latest is version 2 with id $id2" 200 "\"version\":2,\"id\":$id2"
call POST "/subjects/$S" "$V1"; expect "lookup v1 under subject" 200 "\"version\":1,\"id\":$id1"
call POST "/subjects/$S/versions" '{"schema":"{not json"}'; expect "invalid schema" 422 '"error_code":42201'
call GET "/subjects/no-such-subject-$$/versions"; expect "unknown subject" 404 '"error_code":40401'
if ((fail)); then echo "some checks FAILED"; exit 1; fi
echo "all checks passed (ids: v1=$id1 v2=$id2)"
