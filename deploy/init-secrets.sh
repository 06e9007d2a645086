#!/usr/bin/env bash
# Make the secret files deploy/compose.yaml mounts, each only if it does not exist yet:
#
#   secrets/master_key          LEDGER_MASTER_KEY: 32 random bytes, base64. It wraps every
#                               subject's data key: back it up OUTSIDE the database backups
#                               (docs/deploy.md, "The master key"); lost = personal data lost.
#   secrets/postgres_password   the PostgreSQL superuser (used by db-roles/db-grants only)
#   secrets/db_owner_password   consent_owner, the role that migrates
#   secrets/db_app_password     consent_app, the role every service runs as
#
# The folder is 0700 and the files 0444: the containers run as uid 10001 and compose bind-mounts
# the files as they are, so they must be readable by that uid; the folder keeps everyone else
# on this host out. Never overwrites a file: rotating a password is a deliberate step
# (docs/deploy.md, "Rotating database passwords").

set -euo pipefail

dir=${1:-"$(cd "$(dirname "$0")" && pwd)/secrets"}
umask 077
mkdir -p "$dir"
chmod 0700 "$dir"

random_hex() { head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n'; }

make_secret() {
  local file=$dir/$1 value=$2
  if [[ -e $file ]]; then
    echo "init-secrets.sh: $file exists, kept"
    return
  fi
  printf '%s\n' "$value" > "$file.tmp"
  chmod 0444 "$file.tmp"
  mv "$file.tmp" "$file"
  echo "init-secrets.sh: $file made"
}

make_secret master_key "$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
make_secret postgres_password "$(random_hex)"
make_secret db_owner_password "$(random_hex)"
make_secret db_app_password "$(random_hex)"
