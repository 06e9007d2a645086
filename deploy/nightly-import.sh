#!/bin/sh
# One dealer's nightly DMS import (docs/import.md): invoices first (they make customers),
# then prospects, then opt-in settings. Usage: nightly-import.sh TENANT [SOURCE]
#
# Reads $DMS_INBOX/TENANT/{facturen,prospects,optin}*.csv (and .jsonl). A processed file
# (exit 0, or 1 = some rows rejected: its valid rows ARE in the ledger) moves to done/;
# a refused file (2) or an interrupted run (3) stays in the inbox for the next run or for
# a person. Re-running is harmless: the import recognises what it imported before.
# Uses /etc/consent-ledger/mappings/TENANT.toml as the column mapping when it exists.
set -u
tenant=$1
source=${2:-dealer}
inbox=${DMS_INBOX:-/srv/dms/inbox}/$tenant
reports=${IMPORT_REPORTS:-/var/lib/consent-ledger/import}/$tenant
mapping=${IMPORT_MAPPINGS:-/etc/consent-ledger/mappings}/$tenant.toml
ledger=${CONSENT_LEDGER:-/opt/consent-ledger/.venv/bin/consent-ledger}
mkdir -p "$inbox/done" "$reports"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
worst=0
for kind in invoices prospects preferences; do
  case $kind in
    invoices) prefix=facturen ;;
    prospects) prefix=prospects ;;
    preferences) prefix=optin ;;
  esac
  for file in "$inbox"/"$prefix"*.csv "$inbox"/"$prefix"*.jsonl; do
    [ -e "$file" ] || continue
    name=$(basename "$file")
    if [ -f "$mapping" ]; then set -- --mapping "$mapping"; else set --; fi
    "$ledger" import --tenant "$tenant" --source "$source" --kind "$kind" "$@" --no-progress --json \
      --report "$reports/$stamp-$name.rejected.csv" "$file"
    status=$?
    echo "nightly-import: $tenant $name: exit $status"
    if [ "$status" -le 1 ]; then mv "$file" "$inbox/done/$stamp-$name"; fi
    if [ "$status" -gt "$worst" ]; then worst=$status; fi
  done
done
exit "$worst"
