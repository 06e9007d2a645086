#!/usr/bin/env bash
# Create the consent ledger's Kafka topics on a real cluster, or bring an existing topic's
# configuration in line. Idempotent: run it on every deploy (deploy/compose.yaml does, as the
# one-shot service kafka-init). See docs/deploy.md, "Kafka".
#
#   deploy/kafka-topics.sh --bootstrap-server kafka-1:9092,kafka-2:9092 [options]
#
# Options (each also as an environment variable):
#   --bootstrap-server HOSTS    BOOTSTRAP_SERVER       required
#   --replication-factor N      REPLICATION_FACTOR     default: min(3, number of brokers)
#   --min-insync-replicas N     MIN_INSYNC_REPLICAS    default: 2 when N >= 3, else 1
#   --events-partitions N       EVENTS_PARTITIONS      default 6 (bounds projector parallelism)
#   --eligibility-partitions N  ELIGIBILITY_PARTITIONS default 6
#   --tombstone-retention-ms N  TOMBSTONE_RETENTION_MS default 604800000 (7 days)
#   --command-config FILE       COMMAND_CONFIG         client properties (TLS, SASL) for the tools
#   --dry-run                                          print the commands, change nothing
# KAFKA_BIN: folder of kafka-topics.sh and friends (default: found on PATH, else /opt/kafka/bin).
#
# Partition counts are never changed on an existing topic: that would move keys to other
# partitions, breaking per-stream order on the events topic and letting an old eligibility
# matrix outlive a newer one on the compacted topic. A mismatch is reported and the script
# fails; creating a new topic version (…v2) is the way to change it.

set -euo pipefail

EVENTS_TOPIC=consent.ledger.events.v1
ELIGIBILITY_TOPIC=consent.eligibility.v1

bootstrap=${BOOTSTRAP_SERVER:-}
replication=${REPLICATION_FACTOR:-}
min_isr=${MIN_INSYNC_REPLICAS:-}
events_partitions=${EVENTS_PARTITIONS:-6}
eligibility_partitions=${ELIGIBILITY_PARTITIONS:-6}
tombstone_retention_ms=${TOMBSTONE_RETENTION_MS:-604800000}
command_config=${COMMAND_CONFIG:-}
dry_run=false

die() { echo "kafka-topics.sh: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --bootstrap-server) need_value "$@"; bootstrap=$2; shift 2 ;;
    --replication-factor) need_value "$@"; replication=$2; shift 2 ;;
    --min-insync-replicas) need_value "$@"; min_isr=$2; shift 2 ;;
    --events-partitions) need_value "$@"; events_partitions=$2; shift 2 ;;
    --eligibility-partitions) need_value "$@"; eligibility_partitions=$2; shift 2 ;;
    --tombstone-retention-ms) need_value "$@"; tombstone_retention_ms=$2; shift 2 ;;
    --command-config) need_value "$@"; command_config=$2; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ -n $bootstrap ]] || die "--bootstrap-server (or BOOTSTRAP_SERVER) is required"
for name in events_partitions eligibility_partitions tombstone_retention_ms; do
  [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive whole number, not '${!name}'"
done
[[ -z $command_config || -r $command_config ]] || die "--command-config $command_config is not readable"

if [[ -z ${KAFKA_BIN:-} ]]; then
  if command -v kafka-topics.sh > /dev/null; then
    KAFKA_BIN=$(dirname "$(command -v kafka-topics.sh)")
  else
    KAFKA_BIN=/opt/kafka/bin
  fi
fi
for tool in kafka-topics.sh kafka-configs.sh kafka-broker-api-versions.sh; do
  [[ -x $KAFKA_BIN/$tool ]] || die "$KAFKA_BIN/$tool not found: set KAFKA_BIN to the Kafka bin folder"
done

client=(--bootstrap-server "$bootstrap")
[[ -n $command_config ]] && client+=(--command-config "$command_config")

run() {
  if $dry_run; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# -- the cluster's size decides the defaults --------------------------------------------------

if [[ -z $replication ]]; then
  brokers=$("$KAFKA_BIN/kafka-broker-api-versions.sh" "${client[@]}" | grep -cE '\(id: [0-9]+ rack:' || true)
  [[ $brokers -ge 1 ]] || die "no broker answered at $bootstrap"
  replication=$(( brokers < 3 ? brokers : 3 ))
  echo "kafka-topics.sh: $brokers broker(s) answered: replication factor $replication"
fi
[[ $replication =~ ^[1-9][0-9]*$ ]] || die "the replication factor must be a positive whole number, not '$replication'"
if [[ -z $min_isr ]]; then
  min_isr=$(( replication >= 3 ? 2 : 1 ))
fi
[[ $min_isr =~ ^[1-9][0-9]*$ && $min_isr -le $replication ]] \
  || die "min.insync.replicas ($min_isr) must be between 1 and the replication factor ($replication)"

# -- the topics ---------------------------------------------------------------------------------

# The ledger's public log: kept forever (personal data in it is sealed per subject and
# crypto-shredded on erasure), never compacted.
events_configs=(
  cleanup.policy=delete
  retention.ms=-1
  retention.bytes=-1
  min.insync.replicas="$min_isr"
  unclean.leader.election.enable=false
)
# Latest eligibility matrix per subject. Tombstones of erased subjects stay readable for
# delete.retention.ms (a sender offline longer must re-read the topic from the start);
# max.compaction.lag.ms bounds how long a superseded matrix of an erased subject can survive.
eligibility_configs=(
  cleanup.policy=compact
  delete.retention.ms="$tombstone_retention_ms"
  max.compaction.lag.ms=604800000
  segment.ms=86400000
  min.cleanable.dirty.ratio=0.1
  min.insync.replicas="$min_isr"
  unclean.leader.election.enable=false
)

describe() {  # the tool's description of a topic, or nothing if it does not exist
  "$KAFKA_BIN/kafka-topics.sh" "${client[@]}" --describe --topic "$1" 2>/dev/null || true
}

first_value() {  # first_value FIELD < description: the number after "FIELD:" on the topic line
  sed -nE "s/.*$1:[[:space:]]*([0-9]+).*/\\1/p" | head -n 1
}

ensure_topic() {
  local topic=$1 partitions=$2; shift 2
  local configs=("$@") joined have replicas
  joined=$(IFS=,; echo "${configs[*]}")
  have=$(describe "$topic" | first_value PartitionCount)
  if [[ -z $have ]]; then
    local create=("$KAFKA_BIN/kafka-topics.sh" "${client[@]}" --create --if-not-exists --topic "$topic"
                  --partitions "$partitions" --replication-factor "$replication")
    for c in "${configs[@]}"; do create+=(--config "$c"); done
    run "${create[@]}"
    echo "kafka-topics.sh: $topic: created ($partitions partitions, replication $replication)"
    $dry_run && return 0
    have=$(describe "$topic" | first_value PartitionCount)
    [[ -n $have ]] || die "$topic: not visible after creating it"
  fi
  if [[ $have != "$partitions" ]]; then
    echo "kafka-topics.sh: $topic has $have partitions, $partitions wanted: not changed (keys would move" \
         "to other partitions); create a new topic version instead, or pass the existing count" >&2
    return 1
  fi
  replicas=$(describe "$topic" | first_value ReplicationFactor)
  if [[ -n $replicas && $replicas != "$replication" ]]; then
    echo "kafka-topics.sh: warning: $topic has $replicas replicas, $replication wanted;" \
         "change it with kafka-reassign-partitions.sh (docs/deploy.md)" >&2
  fi
  run "$KAFKA_BIN/kafka-configs.sh" "${client[@]}" --alter --entity-type topics --entity-name "$topic" \
    --add-config "$joined"
  echo "kafka-topics.sh: $topic: $have partitions, configs $joined"
}

status=0
ensure_topic "$EVENTS_TOPIC" "$events_partitions" "${events_configs[@]}" || status=1
ensure_topic "$ELIGIBILITY_TOPIC" "$eligibility_partitions" "${eligibility_configs[@]}" || status=1
exit "$status"
