"""A real single-node Apache Kafka broker (KRaft) for the demo and the tests.

The jars come from Maven Central through ``mvn`` (callqa/kafka/pom.xml) and are
cached, so only the first start downloads. Production points callqa at its own
cluster with CALLQA_KAFKA_BOOTSTRAP instead.
"""
from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
KAFKA_VERSION = "3.9.1"


class BrokerError(RuntimeError):
    pass


def jars_dir() -> Path:
    base = os.environ.get("CALLQA_KAFKA_JARS")
    if base:
        return Path(base)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "callqa" / f"kafka-{KAFKA_VERSION}"


def ensure_jars(log=print) -> Path:
    """Download the broker's jars once (mvn), return the folder holding them."""
    d = jars_dir()
    if (d / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return d
    if shutil.which("java") is None:
        raise BrokerError("java is not installed: install a JRE 17+ (apt-get install openjdk-17-jre-headless) "
                          "or point callqa at an existing broker with CALLQA_KAFKA_BOOTSTRAP=host:port")
    if shutil.which("mvn") is None:
        raise BrokerError("mvn is not installed, so the Kafka jars cannot be fetched: apt-get install maven, "
                          "or point callqa at an existing broker with CALLQA_KAFKA_BOOTSTRAP=host:port")
    log(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {d} (first run only)...")
    tmp = d.with_name(d.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-Dkafka.version={KAFKA_VERSION}", f"-DoutputDirectory={tmp}"],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"mvn could not fetch the Kafka jars:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_broker(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Block until the broker answers a real metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError, KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except KafkaConfigurationError:
            raise
        except (KafkaError, OSError, ValueError) as e:  # not up yet
            last = e
            time.sleep(0.5)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s ({last})")


@dataclass
class LocalBroker:
    """Start with ``with LocalBroker() as b: b.bootstrap``; stops on exit."""

    workdir: Path | None = None
    partitions: int = 4
    heap: str = "768m"
    port: int = 0
    bootstrap: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    def start(self, timeout_s: float = 90.0, log=print) -> "LocalBroker":
        jars = ensure_jars(log)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="callqa-kafka-"))
            self._own_dir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        cport = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        data = self.workdir / "data"
        props = self.workdir / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{cport}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data}",
            f"num.partitions={self.partitions}",
            "auto.create.topics.enable=true",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "log.flush.interval.messages=1",  # a broker kill loses nothing acknowledged
        ]) + "\n")
        log4j = self.workdir / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=WARN, file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={self.workdir / 'broker.log'}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n")
        cp = f"{jars}/*"
        jvm = ["java", f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               f"-Dlog4j.configuration=file:{log4j}", "-cp", cp]
        if not (data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            # "=": a random id may start with "-", which the tool's parser would take for an option
            fmt = subprocess.run(jvm + ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                        "-c", str(props)], capture_output=True, text=True)
            if fmt.returncode != 0:
                raise BrokerError(f"formatting Kafka storage failed: {fmt.stdout}{fmt.stderr}")
        out = open(self.workdir / "broker.out", "ab")
        self._proc = subprocess.Popen(jvm + ["kafka.Kafka", str(props)], stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if self._proc.poll() is not None:
                    raise BrokerError(f"the Kafka broker exited (code {self._proc.returncode}); "
                                      f"see {self.workdir / 'broker.out'} and broker.log")
                try:
                    wait_for_broker(self.bootstrap, timeout_s=2)
                    break
                except BrokerError:
                    if time.monotonic() > deadline:
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        if self._proc is not None and self._proc.poll() is None:
            if kill:
                self._proc.kill()
            else:
                self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._own_dir and not kill and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ensure_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create the pipeline's topics up front: a worker that subscribes to a topic
    that does not exist yet only notices it at the next metadata refresh (minutes)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker created it meanwhile
    finally:
        admin.close()
