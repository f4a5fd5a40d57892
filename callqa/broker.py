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
import ssl
import subprocess
import tempfile
import time
import uuid
from typing import Optional
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


def wait_for_broker(bootstrap: str, timeout_s: float = 60.0, security: Optional[dict] = None) -> None:
    """Block until the broker answers a real metadata request (``security``: see client_args)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError, KafkaError, SaslAuthenticationFailedError

    from config.kafka_security import client_args
    sec = client_args(security)

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **sec)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except KafkaConfigurationError:
            raise
        except (SaslAuthenticationFailedError, ssl.SSLError) as e:  # up, and refusing us: waiting will not help
            raise BrokerError(f"the Kafka broker at {bootstrap} refused the connection ({type(e).__name__}: {e}); "
                              "check CALLQA_KAFKA_SECURITY_PROTOCOL, CALLQA_KAFKA_SASL_* and "
                              "CALLQA_KAFKA_SSL_*") from None
        except (KafkaError, OSError, ValueError) as e:  # not up yet
            last = e
            time.sleep(0.5)
    hint = ("; a wrong login or certificate looks the same from here: check CALLQA_KAFKA_SASL_* and "
            "CALLQA_KAFKA_SSL_*") if sec else ""
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s ({last}){hint}")


@dataclass
class LocalBroker:
    """Start with ``with LocalBroker() as b: b.bootstrap``; stops on exit."""

    workdir: Path | None = None
    partitions: int = 4
    heap: str = "768m"
    port: int = 0
    bootstrap: str = ""
    # A second listener like a company cluster's: SASL_SSL with SCRAM users, a self-signed certificate
    # for 127.0.0.1/localhost (its PEM in ``cafile``), at ``secure_bootstrap``. The plain listener stays
    # for the broker's own traffic.
    scram_users: dict[str, str] = field(default_factory=dict)
    secure_bootstrap: str = ""
    cafile: str = ""
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
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        secure = self._secure_listener() if self.scram_users else []
        if secure:
            listeners.append(f"SECURE://127.0.0.1:{secure[0]}")
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{cport}",
            f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners={','.join(listeners)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SECURE:SASL_SSL",
            *secure[1:],
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
            scram = [f"--add-scram=SCRAM-SHA-{n}=[name={u},password={p}]"
                     for u, p in self.scram_users.items() for n in (256, 512)]
            fmt = subprocess.run(jvm + ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                        "-c", str(props), *scram], capture_output=True, text=True)
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

    def _secure_listener(self) -> list:
        """[port, server.properties lines] of the SASL_SSL listener; makes its certificate with keytool."""
        port = free_port()
        self.secure_bootstrap = f"127.0.0.1:{port}"
        store, pw = self.workdir / "broker.p12", "callqa-test-store"
        if not store.exists():
            subprocess.run(["keytool", "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
                            "-validity", "3650", "-dname", "CN=localhost", "-ext", "SAN=IP:127.0.0.1,DNS:localhost",
                            "-keystore", str(store), "-storetype", "PKCS12", "-storepass", pw, "-keypass", pw],
                           check=True, capture_output=True)
        ca = self.workdir / "broker-ca.pem"
        subprocess.run(["keytool", "-exportcert", "-alias", "broker", "-rfc", "-keystore", str(store),
                        "-storepass", pw, "-file", str(ca)], check=True, capture_output=True)
        self.cafile = str(ca)
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return [port,
                "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
                "listener.name.secure.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
                f"listener.name.secure.scram-sha-256.sasl.jaas.config={jaas}",
                f"listener.name.secure.scram-sha-512.sasl.jaas.config={jaas}",
                "listener.name.secure.ssl.keystore.type=PKCS12",
                f"listener.name.secure.ssl.keystore.location={store}",
                f"listener.name.secure.ssl.keystore.password={pw}",
                f"listener.name.secure.ssl.key.password={pw}"]

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


def ensure_topics(bootstrap: str, names: list[str], partitions: int, replication: int = 1,
                  security: Optional[dict] = None) -> None:
    """Create the pipeline's topics up front: a worker that subscribes to a topic
    that does not exist yet only notices it at the next metadata refresh (minutes)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from config.kafka_security import client_args
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000, **client_args(security))
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, num_partitions=partitions, replication_factor=replication)
                   for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker created it meanwhile
    finally:
        admin.close()
