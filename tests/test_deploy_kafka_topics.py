"""deploy/kafka-topics.sh: which topics it creates with which configs, that a second run
changes nothing but the configs, and that it refuses to touch a partition count.

Apache Kafka's own tools need a JVM and a cluster, which the test machine does not have; the
script is run against stand-ins for kafka-topics.sh, kafka-configs.sh and
kafka-broker-api-versions.sh that keep a cluster's topics in a JSON file and answer in the
real tools' output format (Kafka 3.7+). What is tested is the script's own logic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "kafka-topics.sh"

_TOOL = r'''#!{python}
"""Stand-in for Kafka's {name}: state in $FAKE_KAFKA_STATE, each call appended to calls."""
import json, os, sys
path = os.environ["FAKE_KAFKA_STATE"]
state = json.load(open(path))
args = sys.argv[1:]
state["calls"].append(["{name}"] + args)
def opt(name):
    return args[args.index(name) + 1] if name in args else None
def save():
    json.dump(state, open(path, "w"))
topics = state["topics"]
if "{name}" == "kafka-broker-api-versions.sh":
    save()
    for i in range(1, state["brokers"] + 1):
        print(f"kafka-{{i}}:9092 (id: {{i}} rack: null isFenced: false) -> (")
        print("\tProduce(0): 0 to 11 [usable: 11],")
        print(")")
    sys.exit(0)
if "{name}" == "kafka-topics.sh" and "--describe" in args:
    save()
    t = topics.get(opt("--topic"))
    if t is None:
        print(f"Error while executing topic command : Topic '{{opt('--topic')}}' does not exist as expected",
              file=sys.stderr)
        sys.exit(1)
    configs = ",".join(f"{{k}}={{v}}" for k, v in sorted(t["configs"].items()))
    print(f"Topic: {{opt('--topic')}}\tTopicId: abc\tPartitionCount: {{t['partitions']}}\t"
          f"ReplicationFactor: {{t['replication']}}\tConfigs: {{configs}}")
    for p in range(t["partitions"]):
        print(f"\tTopic: {{opt('--topic')}}\tPartition: {{p}}\tLeader: 1\tReplicas: 1\tIsr: 1")
    sys.exit(0)
if "{name}" == "kafka-topics.sh" and "--create" in args:
    name = opt("--topic")
    if name in topics:
        save()
        if "--if-not-exists" in args:
            sys.exit(0)
        print("Topic already exists", file=sys.stderr)
        sys.exit(1)
    if int(opt("--replication-factor")) > state["brokers"]:
        save()
        print("Replication factor larger than available brokers", file=sys.stderr)
        sys.exit(1)
    configs = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--config")
    topics[name] = {{"partitions": int(opt("--partitions")), "replication": int(opt("--replication-factor")),
                    "configs": configs}}
    save()
    sys.exit(0)
if "{name}" == "kafka-configs.sh" and "--alter" in args:
    name = opt("--entity-name")
    if name not in topics:
        save()
        sys.exit(1)
    topics[name]["configs"].update(dict(kv.split("=", 1) for kv in opt("--add-config").split(",")))
    save()
    sys.exit(0)
save()
print("unexpected call", args, file=sys.stderr)
sys.exit(3)
'''


class FakeCluster:
    def __init__(self, root: Path, brokers: int) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.state_path = root / "state.json"
        self.state_path.write_text(json.dumps({"brokers": brokers, "topics": {}, "calls": []}))
        for name in ("kafka-topics.sh", "kafka-configs.sh", "kafka-broker-api-versions.sh"):
            tool = self.bin / name
            tool.write_text(_TOOL.format(python=sys.executable, name=name))
            tool.chmod(0o755)

    @property
    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def topic(self, name: str) -> dict:
        return self.state["topics"][name]

    def calls(self, tool: str, flag: str) -> int:
        return sum(1 for c in self.state["calls"] if c[0] == tool and flag in c)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(self.bin),
                       "FAKE_KAFKA_STATE": str(self.state_path), **env}
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment,
                              timeout=60, check=False)


@pytest.fixture
def single_broker(tmp_path: Path) -> FakeCluster:
    return FakeCluster(tmp_path, brokers=1)


def test_a_new_single_broker_cluster_gets_both_topics_with_their_configs(single_broker: FakeCluster) -> None:
    result = single_broker.run("--bootstrap-server", "kafka:9092")
    assert result.returncode == 0, result.stderr
    events = single_broker.topic("consent.ledger.events.v1")
    assert (events["partitions"], events["replication"]) == (6, 1)
    assert events["configs"] == {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1",
                                 "min.insync.replicas": "1", "unclean.leader.election.enable": "false"}
    eligibility = single_broker.topic("consent.eligibility.v1")
    assert (eligibility["partitions"], eligibility["replication"]) == (6, 1)
    assert eligibility["configs"]["cleanup.policy"] == "compact"
    assert eligibility["configs"]["delete.retention.ms"] == "604800000"
    assert eligibility["configs"]["min.insync.replicas"] == "1"


def test_three_brokers_give_replication_3_and_two_in_sync_replicas(tmp_path: Path) -> None:
    cluster = FakeCluster(tmp_path, brokers=5)
    result = cluster.run("--bootstrap-server", "kafka-1:9092")
    assert result.returncode == 0, result.stderr
    for topic in ("consent.ledger.events.v1", "consent.eligibility.v1"):
        assert cluster.topic(topic)["replication"] == 3
        assert cluster.topic(topic)["configs"]["min.insync.replicas"] == "2"


def test_a_second_run_creates_nothing_and_repairs_a_changed_config(single_broker: FakeCluster) -> None:
    assert single_broker.run("--bootstrap-server", "kafka:9092").returncode == 0
    creates = single_broker.calls("kafka-topics.sh", "--create")
    state = single_broker.state
    state["topics"]["consent.ledger.events.v1"]["configs"]["retention.ms"] = "604800000"  # someone changed it
    single_broker.state_path.write_text(json.dumps(state))

    again = single_broker.run("--bootstrap-server", "kafka:9092")
    assert again.returncode == 0, again.stderr
    assert single_broker.calls("kafka-topics.sh", "--create") == creates
    assert single_broker.topic("consent.ledger.events.v1")["configs"]["retention.ms"] == "-1"


def test_a_topic_with_other_partitions_is_left_alone_and_the_run_fails(single_broker: FakeCluster) -> None:
    state = single_broker.state
    state["topics"]["consent.ledger.events.v1"] = {"partitions": 12, "replication": 1, "configs": {}}
    single_broker.state_path.write_text(json.dumps(state))
    result = single_broker.run("--bootstrap-server", "kafka:9092")
    assert result.returncode == 1
    assert "consent.ledger.events.v1 has 12 partitions, 6 wanted: not changed" in result.stderr
    assert single_broker.topic("consent.ledger.events.v1")["partitions"] == 12
    assert single_broker.topic("consent.eligibility.v1")["partitions"] == 6, "the other topic is still made"


def test_settings_come_from_the_environment_too(single_broker: FakeCluster) -> None:
    result = single_broker.run(BOOTSTRAP_SERVER="kafka:9092", EVENTS_PARTITIONS="3", TOMBSTONE_RETENTION_MS="86400000")
    assert result.returncode == 0, result.stderr
    assert single_broker.topic("consent.ledger.events.v1")["partitions"] == 3
    assert single_broker.topic("consent.eligibility.v1")["configs"]["delete.retention.ms"] == "86400000"


def test_a_dry_run_prints_the_commands_and_changes_nothing(single_broker: FakeCluster) -> None:
    result = single_broker.run("--bootstrap-server", "kafka:9092", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "--create --if-not-exists --topic consent.ledger.events.v1" in result.stdout
    assert single_broker.state["topics"] == {}


@pytest.mark.parametrize(("args", "message"), [
    ((), "--bootstrap-server (or BOOTSTRAP_SERVER) is required"),
    (("--bootstrap-server", "k:9092", "--events-partitions", "six"), "events_partitions must be a positive"),
    (("--bootstrap-server", "k:9092", "--replication-factor", "1", "--min-insync-replicas", "2"),
     "min.insync.replicas (2) must be between 1 and the replication factor (1)"),
    (("--bootstrap-server",), "--bootstrap-server needs a value"),
    (("--frobnicate",), "unknown option --frobnicate"),
])
def test_bad_arguments_exit_2_with_the_reason(single_broker: FakeCluster, args: tuple[str, ...], message: str) -> None:
    result = single_broker.run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert single_broker.state["topics"] == {}


def test_a_missing_kafka_installation_is_named(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--bootstrap-server", "k:9092"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "KAFKA_BIN": str(tmp_path)}, timeout=30, check=False)
    assert result.returncode == 2
    assert "kafka-topics.sh not found: set KAFKA_BIN" in result.stderr
